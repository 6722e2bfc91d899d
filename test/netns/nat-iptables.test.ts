import { natSuite } from './nat-suite';

natSuite('iptables');
