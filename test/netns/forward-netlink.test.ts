import { forwardSuite } from './forward-suite';

forwardSuite('netlink');
