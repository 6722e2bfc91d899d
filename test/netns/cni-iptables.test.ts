/** The CNI suite, standalone, with the iptables NAT backend named in the network config. */
import { cniSuite } from './cni-suite';

cniSuite('standalone', 'iptables');
