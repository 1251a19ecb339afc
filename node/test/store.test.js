'use strict'

// The store's methods as express-session and memorystore users call them.

const assert = require('assert')
const fs = require('fs')
const os = require('os')
const path = require('path')
const { Store, call, ok, sleep, eventually, sess, node } = require('./support')

describe('store methods', function () {
  const stores = []
  function open (options) {
    const store = new Store(options)
    stores.push(store)
    return store
  }
  afterEach(async function () {
    await Promise.all(stores.splice(0).map((s) => call(s, 'close')))
  })

  it('round-trips an express-session-shaped session unchanged', async function () {
    const store = open()
    const session = sess(60000, { views: 3, user: { name: 'ada', roles: ['a', 'b'] }, n: null, f: 1.5 })
    await ok(store, 'set', 'sid-1', session)
    assert.deepStrictEqual(await ok(store, 'get', 'sid-1'), JSON.parse(JSON.stringify(session)))
  })

  it('answers a missing session with fn() and no arguments, as memorystore does', async function () {
    const store = open()
    const args = await call(store, 'get', 'nobody')
    assert.deepStrictEqual(args, [])
  })

  it('calls every callback on a later turn, never synchronously', async function () {
    const store = open()
    const order = []
    await new Promise((resolve) => {
      store.set('a', sess(), () => order.push('set'))
      store.get('a', () => order.push('get'))
      store.length(() => order.push('length'))
      store.destroy('a', () => { order.push('destroy'); resolve() })
      order.push('sync')
    })
    assert.deepStrictEqual(order, ['sync', 'set', 'get', 'length', 'destroy'])
  })

  it('keeps the value a caller passed in unaffected by later changes (values are stored serialized)', async function () {
    const store = open()
    const session = sess(60000, { views: 1 })
    await ok(store, 'set', 'x', session)
    session.views = 99
    const first = await ok(store, 'get', 'x')
    first.views = 42
    assert.strictEqual((await ok(store, 'get', 'x')).views, 1)
  })

  it('takes numeric ids as their strings and refuses other id types with a TypeError', async function () {
    const store = open()
    await ok(store, 'set', 7, sess(60000, { seven: true }))
    assert.strictEqual((await ok(store, 'get', '7')).seven, true)
    for (const bad of [undefined, null, {}, NaN, Symbol('x')]) {
      const [err] = await call(store, 'get', bad)
      assert.ok(err instanceof TypeError, `get(${String(bad)})`)
      const [setErr] = await call(store, 'set', bad, sess())
      assert.ok(setErr instanceof TypeError, `set(${String(bad)})`)
    }
  })

  describe('lifetimes (memorystore getTTL)', function () {
    it('a fixed ttl option overrides the cookie', async function () {
      const store = open({ ttl: 150 })
      await ok(store, 'set', 'a', sess(60000))
      assert.ok(await ok(store, 'get', 'a'))
      await sleep(300)
      assert.strictEqual(await ok(store, 'get', 'a'), undefined)
    })

    it('a ttl function is called with (options, sess, sid) and its answer is the lifetime', async function () {
      const seen = []
      const store = open({
        ttl: (options, s, sid) => {
          seen.push([options === store.options, s.kind, sid])
          return s.kind === 'short' ? 100 : 60000
        }
      })
      await ok(store, 'set', 'short', sess(60000, { kind: 'short' }))
      await ok(store, 'set', 'long', sess(60000, { kind: 'long' }))
      assert.deepStrictEqual(seen, [[true, 'short', 'short'], [true, 'long', 'long']])
      await sleep(250)
      assert.strictEqual(await ok(store, 'get', 'short'), undefined)
      assert.ok(await ok(store, 'get', 'long'))
    })

    it('a ttl function that does not return a number fails the call with a TypeError and stores nothing', async function () {
      const store = open({ ttl: () => 'soon' })
      const [err] = await call(store, 'set', 'a', sess())
      assert.ok(err instanceof TypeError)
      assert.match(err.message, /options\.ttl/)
      assert.strictEqual(await ok(store, 'length'), 0)
    })

    it('a ttl function that throws fails the call with its error', async function () {
      const boom = new Error('boom')
      const store = open({ ttl: () => { throw boom } })
      const [err] = await call(store, 'set', 'a', sess())
      assert.strictEqual(err, boom)
    })

    it('without ttl: the cookie maxAge, else its expires, else one day', async function () {
      const store = open()
      await ok(store, 'set', 'max-age', { cookie: { maxAge: 120 } })
      await ok(store, 'set', 'expires', { cookie: { expires: new Date(Date.now() + 120) } })
      await ok(store, 'set', 'browser-session', { cookie: { expires: null } })
      await ok(store, 'set', 'no-cookie', { views: 1 })
      await sleep(300)
      assert.strictEqual(await ok(store, 'get', 'max-age'), undefined)
      assert.strictEqual(await ok(store, 'get', 'expires'), undefined)
      assert.ok(await ok(store, 'get', 'browser-session'))
      assert.ok(await ok(store, 'get', 'no-cookie'))
    })

    it('a lifetime of zero or less stores nothing and removes the previous session', async function () {
      const store = open()
      await ok(store, 'set', 'a', sess(60000, { v: 1 }))
      await ok(store, 'set', 'a', { cookie: { maxAge: -5 }, v: 2 })
      assert.strictEqual(await ok(store, 'get', 'a'), undefined)
      await ok(store, 'set', 'b', { cookie: { expires: new Date(Date.now() - 1000) } })
      assert.strictEqual(await ok(store, 'length'), 0)
    })

    it('expired sessions leave with nobody reading them: length and ids count live sessions only', async function () {
      const store = open()
      for (let i = 0; i < 50; i++) await ok(store, 'set', `short-${i}`, sess(100))
      await ok(store, 'set', 'long', sess(60000))
      assert.strictEqual(await ok(store, 'length'), 51)
      await sleep(300)
      assert.strictEqual(await ok(store, 'length'), 1)
      assert.deepStrictEqual(await ok(store, 'ids'), ['long'])
      assert.deepStrictEqual(Object.keys(await ok(store, 'all')), ['long'])
    })

    it('runs no clock ticker thread: sessions with lifetimes wake nothing a thousand times a second', async function () {
      if (process.platform !== 'linux') this.skip()
      const store = open()
      for (let i = 0; i < 10; i++) await ok(store, 'set', `timed-${i}`, sess(50))
      assert.strictEqual(await ok(store, 'length'), 10)
      const threads = fs.readdirSync('/proc/self/task').map((t) => {
        try {
          return fs.readFileSync(`/proc/self/task/${t}/comm`, 'utf8').trim()
        } catch (_) {
          return ''
        }
      })
      assert.ok(!threads.includes('evanesce-ticker'), `threads: ${threads.join(', ')}`)
      // Expiry is exact without it.
      await sleep(120)
      assert.strictEqual(await ok(store, 'length'), 0)
    })
  })

  describe('touch', function () {
    it('replaces only the cookie and restarts the lifetime', async function () {
      const store = open()
      await ok(store, 'set', 'a', { cookie: { maxAge: 150, path: '/old' }, views: 5 })
      await ok(store, 'touch', 'a', { cookie: { maxAge: 400, path: '/new' }, views: 999 })
      await sleep(250)
      assert.deepStrictEqual(await ok(store, 'get', 'a'), { cookie: { maxAge: 400, path: '/new' }, views: 5 })
      await sleep(300)
      assert.strictEqual(await ok(store, 'get', 'a'), undefined)
    })

    it('never brings back a missing or expired session', async function () {
      const store = open()
      await ok(store, 'touch', 'ghost', sess(60000, { views: 1 }))
      await ok(store, 'set', 'short', sess(80))
      await sleep(200)
      await ok(store, 'touch', 'short', sess(60000))
      assert.strictEqual(await ok(store, 'length'), 0)
    })

    it('with an expired cookie, ends the session', async function () {
      const store = open()
      await ok(store, 'set', 'a', sess(60000))
      await ok(store, 'touch', 'a', { cookie: { maxAge: -1 } })
      assert.strictEqual(await ok(store, 'get', 'a'), undefined)
    })

    it('never undoes a write made between its read and its write (it then only extends the lifetime)', async function () {
      const store = open()
      await ok(store, 'set', 'a', { cookie: { maxAge: 60000 }, v: 'first' })
      const read = store.store.getForTouch('a')
      await ok(store, 'set', 'a', { cookie: { maxAge: 150 }, v: 'second' })
      // A touch that read 'first' and merged a new cookie into it arrives late.
      store.store.touch('a', JSON.stringify({ cookie: { maxAge: 60000 }, v: 'first' }), 400, read.seq)
      await sleep(250)
      assert.deepStrictEqual(await ok(store, 'get', 'a'), { cookie: { maxAge: 150 }, v: 'second' })
    })
  })

  it('destroys one id or an array of ids', async function () {
    const store = open()
    for (const id of ['a', 'b', 'c', 'd']) await ok(store, 'set', id, sess())
    await ok(store, 'destroy', 'a')
    await ok(store, 'destroy', ['b', 'c', 'missing'])
    assert.deepStrictEqual(await ok(store, 'ids'), ['d'])
  })

  it('lists ids and sessions latest written first, touch counting as a write', async function () {
    const store = open()
    for (const id of ['a', 'b', 'c']) await ok(store, 'set', id, sess(60000, { id }))
    await ok(store, 'touch', 'a', sess(60000))
    assert.deepStrictEqual(await ok(store, 'ids'), ['a', 'c', 'b'])
    const all = await ok(store, 'all')
    assert.deepStrictEqual(Object.keys(all), ['a', 'c', 'b'])
    assert.strictEqual(all.b.id, 'b')
  })

  it('clears everything', async function () {
    const store = open()
    for (let i = 0; i < 100; i++) await ok(store, 'set', `s${i}`, sess())
    await ok(store, 'clear')
    assert.strictEqual(await ok(store, 'length'), 0)
    assert.deepStrictEqual(await ok(store, 'all'), {})
  })

  describe('corrupt stored values', function () {
    it('get reports the parse error once, removes the value, and the next get finds nothing', async function () {
      const store = open()
      store.store.set('bad', '{"cookie": {', 60000)
      const [err] = await call(store, 'get', 'bad')
      assert.ok(err instanceof SyntaxError)
      assert.deepStrictEqual(await call(store, 'get', 'bad'), [])
      assert.strictEqual(await ok(store, 'length'), 0)
    })

    it('all and touch report it too, and leave the good sessions alone', async function () {
      const store = open()
      await ok(store, 'set', 'good', sess(60000, { ok: true }))
      store.store.set('bad', 'not json', 60000)
      const [err] = await call(store, 'all')
      assert.ok(err instanceof SyntaxError)
      assert.deepStrictEqual(Object.keys(await ok(store, 'all')), ['good'])
      store.store.set('bad2', 'nope', 60000)
      const [touchErr] = await call(store, 'touch', 'bad2', sess())
      assert.ok(touchErr instanceof SyntaxError)
      assert.deepStrictEqual(await ok(store, 'ids'), ['good'])
    })

    it('a serializer that cannot stringify a session fails set with its error and keeps the old one', async function () {
      const store = open()
      await ok(store, 'set', 'a', sess(60000, { v: 1 }))
      const circular = sess(60000, { v: 2 })
      circular.self = circular
      const [err] = await call(store, 'set', 'a', circular)
      assert.ok(err instanceof TypeError)
      assert.strictEqual((await ok(store, 'get', 'a')).v, 1)
    })
  })

  describe('serializers', function () {
    it('a serializer returning Buffers (or Uint8Arrays) stores bytes', async function () {
      const serializer = {
        stringify: (s) => new Uint8Array(Buffer.from(JSON.stringify(s)).reverse()),
        parse: (b) => {
          assert.ok(Buffer.isBuffer(b))
          return JSON.parse(Buffer.from(b).reverse().toString())
        }
      }
      const store = open({ serializer })
      await ok(store, 'set', 'a', sess(60000, { bytes: true }))
      assert.strictEqual((await ok(store, 'get', 'a')).bytes, true)
      await ok(store, 'touch', 'a', sess(90000))
      assert.strictEqual((await ok(store, 'get', 'a')).cookie.originalMaxAge, 90000)
    })

    it('a serializer returning something else fails set with a TypeError', async function () {
      const store = open({ serializer: { stringify: () => 42, parse: JSON.parse } })
      const [err] = await call(store, 'set', 'a', sess())
      assert.ok(err instanceof TypeError)
      assert.match(err.message, /serializer\.stringify/)
    })

    it('a serializer whose parse fails reports the error to get', async function () {
      const store = open({ serializer: { stringify: JSON.stringify, parse: () => { throw new RangeError('nope') } } })
      await ok(store, 'set', 'a', sess())
      const [err] = await call(store, 'get', 'a')
      assert.ok(err instanceof RangeError)
    })
  })

  describe('bounds', function () {
    it('max holds at most max sessions', async function () {
      const store = open({ max: 100 })
      for (let i = 0; i < 1000; i++) await ok(store, 'set', `s${i}`, sess())
      assert.strictEqual(await ok(store, 'length'), 100)
    })

    it('maxBytes bounds ids plus serialized sessions, and refuses a session larger than the whole bound', async function () {
      const store = open({ maxBytes: 20000 })
      const big = sess(60000, { pad: 'x'.repeat(1000) })
      for (let i = 0; i < 100; i++) await ok(store, 'set', `s${i}`, big)
      const n = await ok(store, 'length')
      assert.ok(n > 0 && n <= 20000 / 1000, `${n} sessions of ~1.1 kB within 20 kB`)
      const [err] = await call(store, 'set', 'huge', sess(60000, { pad: 'x'.repeat(30000) }))
      assert.ok(err instanceof Error)
      assert.match(err.message, /max_bytes/)
      assert.strictEqual(await ok(store, 'get', 'huge'), undefined)
    })
  })

  describe('checkPeriod, startInterval, stopInterval, prune', function () {
    it('the sweeper removes expired sessions with no call at all; stopInterval stops it, startInterval restarts it', async function () {
      const removed = []
      const store = open({ checkPeriod: 20, dispose: (id, value, cause) => removed.push([id, cause]) })
      for (let i = 0; i < 5; i++) await ok(store, 'set', `a${i}`, sess(50))
      await eventually(() => removed.length === 5, 3000, 'the sweeper to expire 5 sessions')
      assert.ok(removed.every(([, cause]) => cause === 'expired'))

      store.stopInterval()
      for (let i = 0; i < 5; i++) await ok(store, 'set', `b${i}`, sess(50))
      await sleep(400)
      assert.strictEqual(removed.length, 5, 'no sweep while stopped and idle')

      store.startInterval()
      await eventually(() => removed.length === 10, 3000, 'the restarted sweeper')
    })

    it('prune removes expired sessions off the event loop and calls back', async function () {
      const removed = []
      const store = open({ dispose: (id, value, cause) => removed.push(cause) })
      for (let i = 0; i < 5; i++) await ok(store, 'set', `a${i}`, sess(30))
      await sleep(100)
      await ok(store, 'prune')
      await eventually(() => removed.length === 5, 3000, 'prune to expire 5 sessions')
      assert.ok(removed.every((cause) => cause === 'expired'))
    })
  })

  describe('close', function () {
    it('makes later calls fail with ERR_EVANESCE_CLOSED, and is idempotent', async function () {
      const store = new Store()
      await ok(store, 'set', 'a', sess())
      await ok(store, 'close')
      await ok(store, 'close')
      for (const [method, args] of [['get', ['a']], ['set', ['a', sess()]], ['touch', ['a', sess()]], ['destroy', ['a']],
        ['length', []], ['ids', []], ['all', []], ['clear', []], ['prune', []]]) {
        const [err] = await call(store, method, ...args)
        assert.strictEqual(err && err.code, 'ERR_EVANESCE_CLOSED', method)
      }
      store.stopInterval()
      store.startInterval()
    })
  })

  describe('snapshotFile', function () {
    let dir
    beforeEach(function () { dir = fs.mkdtempSync(path.join(os.tmpdir(), 'evanesce-snap-')) })
    afterEach(function () { fs.rmSync(dir, { recursive: true, force: true }) })

    const script = (file, body) => `
      const Store = require('.')(require('express-session'))
      const store = new Store({ snapshotFile: ${JSON.stringify(file)} })
      const sess = (ms, data) => ({ cookie: { originalMaxAge: ms, expires: new Date(Date.now() + ms).toISOString() }, ...data })
      ${body}`

    it('sessions survive a restart: saved when the process exits, loaded by the next store', async function () {
      const file = path.join(dir, 'sessions.snap')
      const first = await node(script(file, `
        store.set('kept', sess(60000, { views: 7 }))
        store.set('bytes', sess(60000, { s: 'é€😀' }))
        store.set('short', sess(100, {}))`))
      assert.strictEqual(first.code, 0, first.stderr)
      assert.ok(fs.existsSync(file))
      await sleep(200)
      const second = await node(script(file, `
        store.ids((err, ids) => {
          store.get('kept', (err2, s) => {
            console.log(JSON.stringify({ ids, views: s.views }))
            store.get('bytes', (err3, b) => console.log(b.s))
          })
        })`))
      assert.strictEqual(second.code, 0, second.stderr)
      const [line, text] = second.stdout.trim().split('\n')
      assert.deepStrictEqual(JSON.parse(line), { ids: ['bytes', 'kept'], views: 7 })
      assert.strictEqual(text, 'é€😀')
    })

    it('close(cb) saves and reports the count; a damaged file makes the constructor throw', async function () {
      const file = path.join(dir, 'sessions.snap')
      const store = new Store({ snapshotFile: file })
      await ok(store, 'set', 'a', sess())
      await ok(store, 'set', 'b', sess())
      assert.strictEqual(await ok(store, 'close'), 2)
      const loaded = new Store({ snapshotFile: file })
      assert.strictEqual(await ok(loaded, 'length'), 2)
      await ok(loaded, 'close')

      const bytes = fs.readFileSync(file)
      bytes[bytes.length - 10] ^= 0xff
      fs.writeFileSync(file, bytes)
      assert.throws(() => new Store({ snapshotFile: file }), (err) => /checksum|snapshot/i.test(err.message) && err.code === 'ERR_EVANESCE')
    })
  })

  describe('a callback that throws', function () {
    it('reaches the process as an uncaught exception and leaves the store consistent', async function () {
      const result = await node(`
        const Store = require('.')(require('express-session'))
        const store = new Store({ max: 10 })
        let uncaught = 0
        process.on('uncaughtException', (err) => { uncaught++ })
        const sess = { cookie: { maxAge: 60000 }, v: 1 }
        store.set('a', sess, () => { throw new Error('in set callback') })
        store.get('a', () => { throw new Error('in get callback') })
        store.destroy('a', () => { throw new Error('in destroy callback') })
        for (let i = 0; i < 20; i++) store.set('s' + i, sess, () => { throw new Error('again') })
        setTimeout(() => {
          store.length((err, n) => {
            store.get('s19', (err2, s) => {
              console.log(JSON.stringify({ uncaught, n, v: s && s.v }))
            })
          })
        }, 100)`)
      assert.strictEqual(result.code, 0, result.stderr)
      assert.deepStrictEqual(JSON.parse(result.stdout), { uncaught: 23, n: 10, v: 1 })
    })
  })
})
