'use strict'

// Options: memorystore's defaults, and a TypeError naming the option for every bad value.

const assert = require('assert')
const factory = require('..')
const { Store, call, ok } = require('./support')

describe('options', function () {
  it('the factory takes express-session (anything with a Store class) and returns a subclass of its Store', function () {
    class Base {}
    const Sub = factory({ Store: Base })
    assert.ok(new Sub() instanceof Base)
    assert.throws(() => factory(), TypeError)
    assert.throws(() => factory({}), TypeError)
  })

  it('defaults are memorystore\'s', async function () {
    const store = new Store()
    assert.deepStrictEqual(store.options, {
      checkPeriod: undefined,
      max: Infinity,
      ttl: undefined,
      dispose: undefined,
      stale: undefined,
      noDisposeOnSet: undefined,
      maxBytes: undefined,
      snapshotFile: undefined,
      name: undefined
    })
    assert.strictEqual(store.serializer, JSON)
    assert.ok(store.store, 'the native store, where memorystore keeps its LRU cache')
    await ok(store, 'close')
  })

  it('max: 0 and Infinity mean no limit, as in memorystore (lru-cache)', async function () {
    for (const max of [0, Infinity]) {
      const store = new Store({ max })
      for (let i = 0; i < 300; i++) await ok(store, 'set', `s${i}`, { cookie: { maxAge: 60000 } })
      assert.strictEqual(await ok(store, 'length'), 300, `max ${max}`)
      await ok(store, 'close')
    }
  })

  const bad = {
    checkPeriod: ['soon', -1, NaN, {}],
    max: [-1, 1.5, '10', NaN, {}],
    maxBytes: [0, -1, 2.5, '1kB', NaN],
    ttl: [0, -10, 'long', {}, true],
    dispose: ['log', 1, {}],
    stale: ['yes', 1],
    noDisposeOnSet: ['no', 0],
    serializer: ['JSON', {}, { stringify: JSON.stringify }, { parse: JSON.parse }],
    snapshotFile: ['', 42, 'a\0b'],
    name: ['', 7, {}]
  }
  for (const [option, values] of Object.entries(bad)) {
    it(`a bad ${option} throws a TypeError that names it`, function () {
      for (const value of values) {
        assert.throws(() => new Store({ [option]: value }), (err) => {
          assert.ok(err instanceof TypeError, `${option}: ${String(value)} gave ${err}`)
          assert.ok(err.message.includes(`options.${option}`), err.message)
          return true
        })
      }
    })
  }

  it('null and undefined are absent options', async function () {
    const options = {}
    for (const option of Object.keys(bad)) options[option] = null
    const store = new Store(options)
    await ok(store, 'set', 'a', { cookie: {} })
    assert.ok(await ok(store, 'get', 'a'))
    await ok(store, 'close')
  })

  it('max and maxBytes are exclusive', function () {
    assert.throws(() => new Store({ max: 10, maxBytes: 1000 }), (err) =>
      err instanceof TypeError && /options\.max and options\.maxBytes/.test(err.message))
  })

  it('options must be an object', function () {
    assert.throws(() => new Store('fast'), TypeError)
  })

  it('stores sharing a name must agree on the options of the shared store', async function () {
    const first = new Store({ name: 'options-agree', max: 10 })
    assert.throws(() => new Store({ name: 'options-agree', max: 20 }), (err) =>
      err instanceof TypeError && /options\.max/.test(err.message) && /options-agree/.test(err.message))
    // The options of each JS store (ttl, serializer, dispose) are its own.
    const second = new Store({ name: 'options-agree', max: 10, ttl: 1000, dispose: () => {} })
    await ok(second, 'set', 'a', { cookie: {} })
    assert.strictEqual(await ok(first, 'length'), 1)
    await ok(first, 'close')
    await ok(second, 'close')
  })

  it('closing the last store of a name frees the name: it can be opened again with other options', async function () {
    const first = new Store({ name: 'options-reopen', max: 10 })
    await ok(first, 'close')
    const second = new Store({ name: 'options-reopen', max: 20 })
    assert.strictEqual(await ok(second, 'length'), 0)
    const [err] = await call(second, 'get', 'x')
    assert.strictEqual(err, undefined)
    await ok(second, 'close')
  })
})
