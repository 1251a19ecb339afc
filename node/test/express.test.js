'use strict'

// Express 5 + express-session over HTTP on loopback, with this package as the store.

const assert = require('assert')
const express = require('express')
const session = require('express-session')
const { Store, ok, sleep, eventually, serve, Client } = require('./support')

/**
 * The counter app. Returns the server, the store, what dispose heard, and how many times
 * express-session called touch and set.
 */
async function counterApp ({ store: storeOptions = {}, session: sessionOptions = {} } = {}) {
  const heard = []
  const calls = { touch: 0, set: 0 }
  const store = new Store({ dispose: (id, value, cause) => heard.push([id, cause]), ...storeOptions })
  for (const method of Object.keys(calls)) {
    const original = store[method]
    store[method] = function (...args) {
      calls[method]++
      return original.apply(this, args)
    }
  }
  const app = express()
  app.use(session({ store, secret: 'keyboard cat', resave: false, saveUninitialized: false, ...sessionOptions }))
  app.get('/inc', (req, res) => {
    req.session.views = (req.session.views || 0) + 1
    res.json({ views: req.session.views })
  })
  app.get('/peek', (req, res) => res.json({ views: req.session.views ?? null }))
  app.get('/login', (req, res, next) => {
    req.session.regenerate((err) => {
      if (err) return next(err)
      req.session.user = 'ada'
      res.json({ user: req.session.user })
    })
  })
  app.get('/whoami', (req, res) => res.json({ user: req.session.user ?? null, views: req.session.views ?? null }))
  app.get('/logout', (req, res, next) => {
    req.session.destroy((err) => (err ? next(err) : res.json({ bye: true })))
  })
  app.use((err, req, res, next) => res.status(500).json({ error: err.message }))
  const server = await serve(app)
  return {
    ...server,
    store,
    heard,
    calls,
    close: async () => {
      await server.close()
      await ok(store, 'close')
    }
  }
}

describe('Express 5 + express-session', function () {
  let app
  afterEach(async function () {
    if (app) await app.close()
    app = undefined
  })

  it('a counter follows its cookie; another browser has its own', async function () {
    app = await counterApp()
    const a = new Client(app.url)
    const b = new Client(app.url)
    for (let i = 1; i <= 3; i++) assert.deepStrictEqual((await a.get('/inc')).body, { views: i })
    assert.deepStrictEqual((await b.get('/inc')).body, { views: 1 })
    assert.deepStrictEqual((await a.get('/inc')).body, { views: 4 })
    assert.notStrictEqual(a.sid(), b.sid())
    const stored = await ok(app.store, 'get', a.sid())
    assert.strictEqual(stored.views, 4)
    assert.strictEqual(stored.cookie.httpOnly, true)
    assert.strictEqual(await ok(app.store, 'length'), 2)
  })

  it('resave: false: an unmodified session is touched, which keeps it alive past its first maxAge', async function () {
    app = await counterApp({ session: { cookie: { maxAge: 600 } } })
    const c = new Client(app.url)
    await c.get('/inc')
    assert.strictEqual(app.calls.set, 1)
    for (let i = 0; i < 5; i++) {
      await sleep(200)
      const res = await c.get('/peek')
      assert.deepStrictEqual(res.body, { views: 1 }, `peek ${i} at ${(i + 1) * 200} ms`)
      assert.deepStrictEqual(res.setCookies, [], 'rolling is off: no cookie resent')
    }
    assert.strictEqual(app.calls.touch, 5)
    assert.strictEqual(app.calls.set, 1, 'touched, not saved again')
    assert.deepStrictEqual(app.heard, [], 'a touch is not a removal')
    await sleep(900)
    assert.deepStrictEqual((await c.get('/peek')).body, { views: null }, 'expired once nobody touched it for longer than maxAge')
  })

  it('rolling: true resends the cookie with a later expiry on every response, and touches the store', async function () {
    app = await counterApp({ session: { rolling: true, cookie: { maxAge: 60000 } } })
    const c = new Client(app.url)
    await c.get('/inc')
    const expiries = []
    for (let i = 0; i < 3; i++) {
      await sleep(20)
      const res = await c.get('/peek')
      assert.strictEqual(res.setCookies.length, 1)
      expiries.push(Date.parse(/Expires=([^;]+)/.exec(res.setCookies[0])[1]))
    }
    assert.ok(expiries[2] >= expiries[0], 'the cookie expiry moves forward')
    assert.strictEqual(app.calls.touch, 3)
    const stored = await ok(app.store, 'get', c.sid())
    assert.ok(Date.parse(stored.cookie.expires) >= Date.now() + 59000 - 200, 'the stored cookie was replaced by the touched one')
    assert.strictEqual(stored.views, 1)
  })

  it('req.session.regenerate gives a new id with the old session destroyed (dispose hears it once)', async function () {
    app = await counterApp()
    const c = new Client(app.url)
    await c.get('/inc')
    const before = c.sid()
    assert.deepStrictEqual((await c.get('/login')).body, { user: 'ada' })
    const after = c.sid()
    assert.notStrictEqual(after, before)
    assert.strictEqual(await ok(app.store, 'get', before), undefined)
    assert.strictEqual((await ok(app.store, 'get', after)).user, 'ada')
    assert.deepStrictEqual((await c.get('/whoami')).body, { user: 'ada', views: null })
    assert.deepStrictEqual(app.heard, [[before, 'destroyed']])
  })

  it('req.session.destroy removes the session (dispose hears it once); the next request starts a new one', async function () {
    app = await counterApp()
    const c = new Client(app.url)
    await c.get('/inc')
    await c.get('/inc')
    const sid = c.sid()
    assert.deepStrictEqual((await c.get('/logout')).body, { bye: true })
    assert.strictEqual(await ok(app.store, 'get', sid), undefined)
    assert.strictEqual(await ok(app.store, 'length'), 0)
    assert.deepStrictEqual((await c.get('/inc')).body, { views: 1 })
    assert.notStrictEqual(c.sid(), sid)
    // Two values were stored under sid: the second replaced the first, the logout removed it.
    assert.deepStrictEqual(app.heard, [[sid, 'replaced'], [sid, 'destroyed']])
  })

  it('sessions expire by cookie maxAge with nobody reading them: dispose hears each once, length drops to 0', async function () {
    app = await counterApp({ store: { checkPeriod: 25 }, session: { cookie: { maxAge: 200 } } })
    const clients = Array.from({ length: 30 }, () => new Client(app.url))
    for (const c of clients) await c.get('/inc')
    const sids = clients.map((c) => c.sid())
    // No request and no store call from here until every expiry was heard.
    await eventually(() => app.heard.length >= 30, 5000, '30 expiries')
    await sleep(100)
    assert.deepStrictEqual(app.heard.map(([id]) => id).sort(), sids.sort())
    assert.ok(app.heard.every(([, cause]) => cause === 'expired'))
    assert.strictEqual(await ok(app.store, 'length'), 0)
  })

  it('a corrupted stored session gives the app an error (500); the next request gets a fresh session', async function () {
    app = await counterApp()
    const c = new Client(app.url)
    await c.get('/inc')
    const sid = c.sid()
    // Bytes that are not JSON, written under the session's id, past the serializer.
    app.store.store.set(sid, '{"cookie":{"originalMaxAge":null', 60000)
    const broken = await c.get('/inc')
    assert.strictEqual(broken.status, 500)
    assert.match(broken.body.error, /JSON/)
    const fresh = await c.get('/inc')
    assert.strictEqual(fresh.status, 200)
    assert.deepStrictEqual(fresh.body, { views: 1 })
    assert.notStrictEqual(c.sid(), sid)
  })

  it('max evicts the least valuable sessions first: returning visitors outlive a flood of one-time visitors', async function () {
    app = await counterApp({ store: { max: 50 } })
    const regulars = Array.from({ length: 5 }, () => new Client(app.url))
    for (let round = 0; round < 4; round++) {
      for (const c of regulars) await c.get('/inc')
    }
    const once = []
    for (let i = 0; i < 300; i++) {
      const c = new Client(app.url)
      await c.get('/inc')
      once.push(c.sid())
    }
    assert.strictEqual(await ok(app.store, 'length'), 50)
    for (const c of regulars) {
      assert.deepStrictEqual((await c.get('/inc')).body, { views: 5 }, 'a regular kept their session')
    }
    const live = new Set(await ok(app.store, 'ids'))
    const onceLive = once.filter((sid) => live.has(sid)).length
    assert.ok(onceLive <= 45, `${onceLive} one-time visitors still held`)
    const evicted = app.heard.filter(([, cause]) => cause === 'evicted')
    assert.strictEqual(evicted.length, 300 + 5 - 50)
    assert.strictEqual(new Set(evicted.map(([id]) => id)).size, evicted.length, 'each eviction heard once')
    assert.ok(evicted.every(([id]) => !live.has(id)))
  })

  it('the same flood under memorystore (an LRU) evicts the regulars: the test above can tell the difference', async function () {
    const MemoryStore = require('memorystore')(session)
    const store = new MemoryStore({ max: 50 })
    const server = express()
    server.use(session({ store, secret: 's', resave: false, saveUninitialized: false }))
    server.get('/inc', (req, res) => {
      req.session.views = (req.session.views || 0) + 1
      res.json({ views: req.session.views })
    })
    const s = await serve(server)
    try {
      const regular = new Client(s.url)
      for (let round = 0; round < 4; round++) await regular.get('/inc')
      for (let i = 0; i < 300; i++) await new Client(s.url).get('/inc')
      assert.deepStrictEqual((await regular.get('/inc')).body, { views: 1 }, 'the regular lost their session')
    } finally {
      await s.close()
      store.stopInterval()
    }
  })
})
