/** The CNI suite with the installed shims falling back to the standalone plugin (no agent listens on their socket). */
import { cniSuite } from './cni-suite';

cniSuite('standalone');
