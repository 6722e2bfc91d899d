import { natSuite } from './nat-suite';

natSuite('netlink');
