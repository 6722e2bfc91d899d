/** The CNI suite, standalone, with the nft (text) NAT backend named in the network config. */
import { cniSuite } from './cni-suite';

cniSuite('standalone', 'nft');
