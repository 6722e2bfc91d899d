/** The CNI suite with a `tsnet agent` serving every node namespace: the same calls, the same assertions. */
import { cniSuite } from './cni-suite';

cniSuite('agent');
