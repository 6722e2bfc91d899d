import { forwardSuite } from './forward-suite';

forwardSuite('iptables');
