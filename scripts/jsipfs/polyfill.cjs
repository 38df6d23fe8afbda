// Loaded into the js-ipfs daemon with NODE_OPTIONS=--require by scripts/ipfs-testnet.sh.
// Node 20 lacks Promise.withResolvers (added in Node 22), which newer libp2p helpers call.
// The "mortice" override in package.json already avoids the one known caller; this is a
// second guard in case another drifted dependency needs it.
'use strict'
if (typeof Promise.withResolvers !== 'function') {
  Object.defineProperty(Promise, 'withResolvers', {
    configurable: true,
    writable: true,
    value: function withResolvers () {
      let resolve, reject
      const promise = new this((res, rej) => { resolve = res; reject = rej })
      return { promise, resolve, reject }
    }
  })
}
