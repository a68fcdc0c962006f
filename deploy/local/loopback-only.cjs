// Preloaded into the Kinesis emulator (node --require) so that it listens on
// loopback only: the emulator hard-codes 0.0.0.0 and has no setting for it.
// Every server.listen() call whose host is a wildcard is rewritten to 127.0.0.1.
'use strict';
const net = require('net');
const original = net.Server.prototype.listen;
const WILDCARDS = new Set(['0.0.0.0', '::', '', undefined, null]);
net.Server.prototype.listen = function listen(...args) {
  const first = args[0];
  if (first !== null && typeof first === 'object' && !Array.isArray(first)) {
    if (WILDCARDS.has(first.host)) args[0] = { ...first, host: '127.0.0.1' };
  } else if (typeof first === 'number' || (typeof first === 'string' && /^\d+$/.test(first))) {
    if (typeof args[1] !== 'string' || WILDCARDS.has(args[1])) {
      if (typeof args[1] === 'string') args[1] = '127.0.0.1';
      else args.splice(1, 0, '127.0.0.1');
    }
  }
  return original.apply(this, args);
};
