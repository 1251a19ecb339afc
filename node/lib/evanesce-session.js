'use strict'

/*!
 * evanesce-session: express-session's sessions in the evanesce engine.
 *
 * The same factory shape, options and methods as memorystore:
 *
 *   const session = require('express-session')
 *   const EvanesceStore = require('evanesce-session')(session)
 *   app.use(session({ store: new EvanesceStore({ checkPeriod: 86400000 }), secret, ... }))
 *
 * JS serializes sessions (the `serializer` option) and computes their lifetimes
 * (memorystore's rules, with a `ttl` function called here on the JS thread); the native
 * store (../src, Rust) holds the serialized bytes off the JS heap, expires them on its own
 * (its timer wheel, plus the `checkPeriod` sweeper thread), bounds them (`max`, `maxBytes`),
 * counts and lists them, and reports removals back for `dispose`.
 */

const { NativeStore } = require('./native')

/** One day in milliseconds: the lifetime of a session whose cookie does not give one. */
const ONE_DAY = 86400000

/** Calls `fn(...args)` on a later turn of the event loop (memorystore's runCallback). */
function callback (fn, ...args) {
  if (typeof fn === 'function') {
    setImmediate(fn, ...args)
  }
}

function describe (value) {
  if (typeof value === 'string') return JSON.stringify(value)
  if (typeof value === 'function') return 'a function'
  if (value === null) return 'null'
  if (Array.isArray(value)) return 'an array'
  if (typeof value === 'object') return 'an object'
  return String(value)
}

function optionError (name, what, value) {
  return new TypeError(`evanesce-session: options.${name} must be ${what}, got ${describe(value)}`)
}

const absent = (value) => value === undefined || value === null

/**
 * Checks the options; throws a TypeError that names the first bad one. Returns the options
 * of the native engine store.
 */
function engineOptions (options) {
  const { checkPeriod, max, maxBytes, ttl, dispose, stale, noDisposeOnSet, serializer, snapshotFile, name } = options
  const engine = {}
  if (!absent(checkPeriod)) {
    // memorystore: 0 (and Infinity) mean "no periodic check".
    if (typeof checkPeriod !== 'number' || Number.isNaN(checkPeriod) || checkPeriod < 0) {
      throw optionError('checkPeriod', 'a number of milliseconds (0 or Infinity: no sweeper)', checkPeriod)
    }
    if (checkPeriod > 0 && Number.isFinite(checkPeriod)) engine.checkPeriod = Math.max(1, Math.floor(checkPeriod))
  }
  if (!absent(max)) {
    // memorystore (lru-cache 4): 0 and Infinity mean "no limit".
    if (typeof max !== 'number' || !(max === Infinity || (Number.isInteger(max) && max >= 0))) {
      throw optionError('max', 'a whole number of sessions (0 or Infinity: no limit)', max)
    }
    if (max > 0 && max !== Infinity) engine.max = max
  }
  if (!absent(maxBytes)) {
    if (typeof maxBytes !== 'number' || !(maxBytes === Infinity || (Number.isInteger(maxBytes) && maxBytes > 0))) {
      throw optionError('maxBytes', 'a positive whole number of bytes (or Infinity: no limit)', maxBytes)
    }
    if (maxBytes !== Infinity) {
      if (engine.max !== undefined) {
        throw new TypeError('evanesce-session: options.max and options.maxBytes are exclusive: bound the store by sessions or by bytes')
      }
      engine.maxBytes = maxBytes
    }
  }
  if (!absent(ttl) && typeof ttl !== 'function' && !(typeof ttl === 'number' && ttl > 0)) {
    throw optionError('ttl', 'a positive number of milliseconds or a function (options, sess, sid) => milliseconds', ttl)
  }
  if (!absent(dispose) && typeof dispose !== 'function') {
    throw optionError('dispose', 'a function (key, value) => void', dispose)
  }
  if (!absent(stale)) {
    if (typeof stale !== 'boolean') throw optionError('stale', 'a boolean', stale)
    engine.stale = stale
  }
  if (!absent(noDisposeOnSet)) {
    if (typeof noDisposeOnSet !== 'boolean') throw optionError('noDisposeOnSet', 'a boolean', noDisposeOnSet)
    engine.noDisposeOnSet = noDisposeOnSet
  }
  if (!absent(serializer) && (typeof serializer !== 'object' || typeof serializer.stringify !== 'function' ||
      typeof serializer.parse !== 'function')) {
    throw optionError('serializer', 'an object with stringify and parse functions (like JSON)', serializer)
  }
  if (!absent(snapshotFile)) {
    if (typeof snapshotFile !== 'string' || snapshotFile === '' || snapshotFile.includes('\0')) {
      throw optionError('snapshotFile', 'a file path', snapshotFile)
    }
    engine.snapshotFile = snapshotFile
  }
  if (!absent(name)) {
    if (typeof name !== 'string' || name === '') throw optionError('name', 'a non-empty string', name)
    engine.name = name
  }
  return engine
}

/** The engine options that stores sharing a name must agree on. */
const SHARED = ['max', 'maxBytes', 'checkPeriod', 'stale', 'noDisposeOnSet', 'snapshotFile']

function sameEngine (name, wanted, actual) {
  for (const key of SHARED) {
    const a = wanted[key] ?? null
    const b = actual[key] ?? null
    if (a !== b) {
      throw new TypeError(`evanesce-session: options.${key} (${describe(a)}) differs from that of the store named ${JSON.stringify(name)} already open in this process (${describe(b)}); stores sharing a name share one store, so their options must agree`)
    }
  }
}

/**
 * A session's lifetime in milliseconds, by memorystore's rules: the `ttl` option (a number,
 * or a function called as `ttl(options, sess, sid)`), else the cookie's `maxAge` (floored;
 * express-session's Cookie computes it from `expires`), else the cookie's `expires` (for
 * plain objects that carry only a date), else one day.
 */
function lifetime (options, sess, sid) {
  const ttl = options.ttl
  if (typeof ttl === 'number') return ttl
  if (typeof ttl === 'function') {
    const ms = ttl(options, sess, sid)
    if (typeof ms !== 'number' || Number.isNaN(ms)) {
      throw new TypeError(`evanesce-session: options.ttl returned ${describe(ms)} for session ${JSON.stringify(sid)}; it must return a number of milliseconds`)
    }
    return ms
  }
  const cookie = sess && sess.cookie
  if (cookie) {
    const maxAge = cookie.maxAge
    if (typeof maxAge === 'number' && !Number.isNaN(maxAge)) return Math.floor(maxAge)
    if (!absent(cookie.expires)) {
      const at = new Date(cookie.expires).getTime()
      if (!Number.isNaN(at)) return at - Date.now()
    }
  }
  return ONE_DAY
}

/** A session id as a string (express-session's are strings; memorystore's tests use numbers). */
function sessionId (sid) {
  if (typeof sid === 'string') return sid
  if (typeof sid === 'number' && Number.isFinite(sid)) return String(sid)
  throw new TypeError(`evanesce-session: a session id must be a string, got ${describe(sid)}`)
}

/** What a serializer returned, as the native store takes it. */
function serialized (data) {
  if (typeof data === 'string' || Buffer.isBuffer(data)) return data
  if (data instanceof Uint8Array) return Buffer.from(data.buffer, data.byteOffset, data.byteLength)
  throw new TypeError(`evanesce-session: serializer.stringify must return a string or a Buffer, got ${describe(data)}`)
}

/** Errors from the native store, as JS errors with a code. */
function nativeError (err) {
  if (err && err.code === 'Closing') err.code = 'ERR_EVANESCE_CLOSED'
  else if (err && err.code === 'InvalidArg') err.code = 'ERR_EVANESCE_INVALID'
  else if (err && err.code === 'GenericFailure') err.code = 'ERR_EVANESCE'
  return err
}

// Stores with a snapshot file, saved when the process (or worker) exits.
const withSnapshots = new Set()
let exitHook = false

function saveAtExit (store) {
  withSnapshots.add(store)
  if (exitHook) return
  exitHook = true
  process.on('exit', () => {
    for (const ref of withSnapshots) {
      const s = ref.deref()
      if (!s || s.store.closed) continue
      try {
        s.store.saveSnapshotSync()
      } catch (err) {
        process.emitWarning(`evanesce-session: the snapshot could not be saved at exit: ${err.message}`)
      }
    }
  })
}

/**
 * Returns the Store class, extending express-session's `session.Store`.
 *
 * @param {object} session express-session (or anything with a `Store` class)
 * @return {Function}
 */
module.exports = function evanesceSession (session) {
  if (!session || typeof session.Store !== 'function') {
    throw new TypeError('evanesce-session: pass express-session: require(\'evanesce-session\')(require(\'express-session\'))')
  }
  const Store = session.Store

  return class EvanesceStore extends Store {
    constructor (options = {}) {
      super(options)
      if (absent(options)) options = {}
      if (typeof options !== 'object') throw new TypeError(`evanesce-session: options must be an object, got ${describe(options)}`)
      const engine = engineOptions(options)

      this.options = {
        checkPeriod: options.checkPeriod,
        max: absent(options.max) ? Infinity : options.max,
        ttl: options.ttl,
        dispose: options.dispose,
        stale: options.stale,
        noDisposeOnSet: options.noDisposeOnSet,
        maxBytes: options.maxBytes,
        snapshotFile: options.snapshotFile,
        name: options.name
      }
      this.serializer = options.serializer || JSON

      const hasDispose = typeof options.dispose === 'function'
      let handle
      try {
        handle = new NativeStore(engine, hasDispose)
      } catch (err) {
        throw nativeError(err)
      }
      if (engine.name !== undefined) {
        try {
          sameEngine(engine.name, engine, handle.engineOptions)
        } catch (err) {
          handle.detach()
          throw err
        }
      }
      /** The native store (memorystore exposes its LRU cache here). */
      this.store = handle
      if (hasDispose) {
        // Weakly: a store nobody uses any more can be collected (and its handle closed).
        const self = new WeakRef(this)
        handle.subscribe((removals) => {
          const store = self.deref()
          if (store) store._dispose(removals)
        })
      }
      if (engine.snapshotFile !== undefined) saveAtExit(new WeakRef(this))
    }

    /** Calls `dispose` for removals; a dispose that throws is rethrown once the rest ran. */
    _dispose (removals) {
      if (removals === null || removals === undefined) return
      const dispose = this.options.dispose
      if (typeof dispose !== 'function') return
      let failed = false
      let failure
      for (const r of removals) {
        try {
          dispose(r.id, r.value === null ? undefined : r.value, r.cause)
        } catch (err) {
          if (!failed) {
            failed = true
            failure = err
          }
        }
      }
      if (failed) {
        process.nextTick(() => { throw failure })
      }
    }

    /** Removes a session whose stored value does not parse (so the next request starts afresh). */
    _discard (sid) {
      try {
        this._dispose(this.store.destroy(sid))
      } catch (_) {
        // Closed meanwhile: nothing to discard.
      }
    }

    /**
     * Fetches the session `sid`: `fn(err, session)`; a missing or expired session is
     * `fn()`, a stored value that does not parse is `fn(err)` (and the value is removed).
     */
    get (sid, fn) {
      let data
      try {
        sid = sessionId(sid)
        data = this.store.get(sid)
      } catch (err) {
        return callback(fn, nativeError(err))
      }
      if (data === null || data === undefined) {
        return callback(fn)
      }
      let result
      try {
        result = this.serializer.parse(data)
      } catch (err) {
        this._discard(sid)
        return callback(fn, err)
      }
      callback(fn, null, result)
    }

    /**
     * Stores `sess` as `sid` for its lifetime (see README: ttl option, else the cookie, else
     * one day); a lifetime of zero or less removes the session instead.
     */
    set (sid, sess, fn) {
      let ttl, data, removals
      try {
        sid = sessionId(sid)
        ttl = lifetime(this.options, sess, sid)
        if (ttl <= 0) {
          removals = this.store.destroy(sid)
        } else {
          data = serialized(this.serializer.stringify(sess))
          removals = this.store.set(sid, data, ttl)
        }
      } catch (err) {
        return callback(fn, nativeError(err))
      }
      this._dispose(removals)
      callback(fn, null)
    }

    /**
     * Restarts the lifetime of the stored session `sid` and replaces its cookie with
     * `sess.cookie` (its data stays as stored). Does nothing if there is no such session.
     */
    touch (sid, sess, fn) {
      let ttl, found
      try {
        sid = sessionId(sid)
        ttl = lifetime(this.options, sess, sid)
        found = this.store.getForTouch(sid)
      } catch (err) {
        return callback(fn, nativeError(err))
      }
      if (found === null || found === undefined) {
        return callback(fn, null)
      }
      let stored
      try {
        stored = this.serializer.parse(found.value)
      } catch (err) {
        this._discard(sid)
        return callback(fn, err)
      }
      let removals
      try {
        stored.cookie = sess.cookie
        const data = serialized(this.serializer.stringify(stored))
        removals = this.store.touch(sid, data, Math.max(ttl, 0), found.seq)
      } catch (err) {
        return callback(fn, nativeError(err))
      }
      this._dispose(removals)
      callback(fn, null)
    }

    /** Removes the session `sid` (or each of an array of ids). */
    destroy (sid, fn) {
      let removals
      try {
        removals = this.store.destroy(Array.isArray(sid) ? sid.map(sessionId) : sessionId(sid))
      } catch (err) {
        return callback(fn, nativeError(err))
      }
      this._dispose(removals)
      callback(fn, null)
    }

    /** The ids of the live sessions, latest written first: `fn(err, ids)`. */
    ids (fn) {
      let listing
      try {
        listing = this.store.ids()
      } catch (err) {
        return callback(fn, nativeError(err))
      }
      listing.then((ids) => callback(fn, null, ids), (err) => callback(fn, nativeError(err)))
    }

    /** Every live session by id: `fn(err, sessions)`. */
    all (fn) {
      let listing
      try {
        listing = this.store.all()
      } catch (err) {
        return callback(fn, nativeError(err))
      }
      listing.then(({ ids, values }) => {
        const result = {}
        for (let i = 0; i < ids.length; i++) {
          try {
            result[ids[i]] = this.serializer.parse(values[i])
          } catch (err) {
            this._discard(ids[i])
            return callback(fn, err)
          }
        }
        callback(fn, null, result)
      }, (err) => callback(fn, nativeError(err)))
    }

    /** Removes every session. */
    clear (fn) {
      let removals
      try {
        removals = this.store.clear()
      } catch (err) {
        return callback(fn, nativeError(err))
      }
      this._dispose(removals)
      callback(fn, null)
    }

    /** The number of live sessions: `fn(err, n)` (expired sessions are never counted). */
    length (fn) {
      let n
      try {
        n = this.store.length()
      } catch (err) {
        return callback(fn, nativeError(err))
      }
      callback(fn, null, n)
    }

    /** (Re)starts the native sweeper with the `checkPeriod` option, if set. */
    startInterval () {
      if (!this.store.closed) this.store.startInterval()
    }

    /** Stops the native sweeper (expiry goes on as sessions are written). */
    stopInterval () {
      if (!this.store.closed) this.store.stopInterval()
    }

    /** Removes expired sessions now, off the event loop; `fn(err)` when done (optional). */
    prune (fn) {
      let done
      try {
        done = this.store.prune()
      } catch (err) {
        return callback(fn, nativeError(err))
      }
      done.then(() => callback(fn, null), (err) => callback(fn, nativeError(err)))
    }

    /** The engine's counters: hits, misses, inserts, removals, evictions, expirations. */
    stats () {
      return this.store.stats()
    }

    /**
     * Saves the snapshot to `path` (default: the `snapshotFile` option), off the event
     * loop: `fn(err, count)`.
     */
    saveSnapshot (path, fn) {
      if (typeof path === 'function') {
        fn = path
        path = undefined
      }
      let saving
      try {
        saving = this.store.saveSnapshot(path)
      } catch (err) {
        return callback(fn, nativeError(err))
      }
      saving.then((n) => callback(fn, null, n), (err) => callback(fn, nativeError(err)))
    }

    /**
     * Closes the store: saves the snapshot if `snapshotFile` is set (`fn(err, count)`), then
     * lets go of the native store. Every later call fails with ERR_EVANESCE_CLOSED.
     * Idempotent. Call it once the server has stopped taking requests.
     */
    close (fn) {
      for (const ref of withSnapshots) {
        if (ref.deref() === this) withSnapshots.delete(ref)
      }
      this.store.close().then(
        (saved) => callback(fn, null, saved === null ? undefined : saved),
        (err) => callback(fn, nativeError(err))
      )
    }
  }
}

module.exports.lifetime = lifetime
