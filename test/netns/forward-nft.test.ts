import { forwardSuite } from './forward-suite';

forwardSuite('nft');
