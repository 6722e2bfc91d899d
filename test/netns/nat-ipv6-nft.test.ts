import { natIpv6Suite } from './nat-ipv6-suite';

natIpv6Suite('nft');
