import { natSuite } from './nat-suite';

natSuite('nft');
