'use strict'

// dispose: heard exactly once per removal, whichever thread removed the session.

const assert = require('assert')
const { Store, call, ok, sleep, eventually, sess, node } = require('./support')

/** A dispose that records (id, value, cause, whether it ran inside a store call). */
function recorder () {
  const heard = []
  let inCall = false
  const dispose = (id, value, cause) => heard.push({ id, value, cause, inCall })
  const during = (f) => {
    inCall = true
    try { return f() } finally { inCall = false }
  }
  return { heard, dispose, during }
}

function countBy (heard) {
  const counts = new Map()
  for (const { id, cause } of heard) {
    const key = `${id}:${cause}`
    counts.set(key, (counts.get(key) || 0) + 1)
  }
  return counts
}

describe('dispose', function () {
  it('hears each removal once with the stored value and its cause: replaced, destroyed, cleared', async function () {
    const r = recorder()
    const store = new Store({ dispose: r.dispose })
    await ok(store, 'set', 'a', sess(60000, { v: 1 }))
    await ok(store, 'set', 'a', sess(60000, { v: 2 }))
    await ok(store, 'set', 'b', sess(60000, { v: 3 }))
    await ok(store, 'destroy', 'a')
    await ok(store, 'destroy', 'a') // nothing left: no second report
    await ok(store, 'set', 'c', sess())
    await ok(store, 'clear')
    assert.strictEqual(r.heard.length, 4)
    const seen = r.heard.map(({ id, value, cause }) => [id, JSON.parse(value).v, cause])
    assert.deepStrictEqual(seen.slice(0, 2), [['a', 1, 'replaced'], ['a', 2, 'destroyed']])
    // clear walks the shards in their order, not in the order of writes.
    assert.deepStrictEqual(seen.slice(2).sort(), [['b', 3, 'cleared'], ['c', undefined, 'cleared']])
    await ok(store, 'close')
  })

  it('removals a call causes are delivered in place: before the call returns, in the engine\'s order', async function () {
    const r = recorder()
    const store = new Store({ dispose: r.dispose })
    await ok(store, 'set', 'a', sess(60000, { v: 1 }))
    let callbackRan = false
    r.during(() => store.set('a', sess(60000, { v: 2 }), () => { callbackRan = true }))
    assert.strictEqual(r.heard.length, 1)
    assert.strictEqual(r.heard[0].inCall, true, 'dispose ran inside set, as memorystore\'s does')
    assert.strictEqual(callbackRan, false, '...and before set\'s callback')
    await ok(store, 'close')
  })

  it('touch is not a removal; with noDisposeOnSet, set over a session is not either', async function () {
    const r = recorder()
    const store = new Store({ dispose: r.dispose, noDisposeOnSet: true })
    await ok(store, 'set', 'a', sess(60000, { v: 1 }))
    await ok(store, 'set', 'a', sess(60000, { v: 2 }))
    await ok(store, 'touch', 'a', sess(90000))
    await sleep(50)
    assert.deepStrictEqual(r.heard, [])
    await ok(store, 'destroy', 'a')
    assert.deepStrictEqual(r.heard.map(({ id, cause }) => [id, cause]), [['a', 'destroyed']])
    await ok(store, 'close')
  })

  it('evictions by max are heard as "evicted", once each', async function () {
    const r = recorder()
    const store = new Store({ max: 50, dispose: r.dispose })
    for (let i = 0; i < 500; i++) await ok(store, 'set', `s${i}`, sess())
    assert.strictEqual(await ok(store, 'length'), 50)
    await sleep(50)
    assert.strictEqual(r.heard.length, 450)
    assert.ok(r.heard.every(({ cause }) => cause === 'evicted'))
    assert.strictEqual(new Set(r.heard.map(({ id }) => id)).size, 450, 'no id twice')
    const live = new Set(await ok(store, 'ids'))
    assert.ok(r.heard.every(({ id }) => !live.has(id)), 'never a session still in the store')
    await ok(store, 'close')
  })

  it('expiries swept on an engine thread reach JS exactly once per session, through the thread-safe function', async function () {
    const r = recorder()
    const store = new Store({ checkPeriod: 10, dispose: r.dispose })
    const n = 2000
    for (let i = 0; i < n; i++) store.set(`e${i}`, sess(100 + (i % 50)))
    assert.strictEqual(r.heard.length, 0, 'nothing expired while setting')
    // From here on no store method is called until all have been heard: each removal comes
    // from the sweeper's thread through the thread-safe function.
    await eventually(() => r.heard.length >= n, 5000, `${n} expiries`)
    await sleep(300) // would catch a late duplicate
    assert.strictEqual(r.heard.length, n)
    assert.strictEqual(new Set(r.heard.map(({ id }) => id)).size, n)
    assert.ok(r.heard.every(({ cause, value }) => cause === 'expired' && typeof value === 'string'))
    assert.strictEqual(await ok(store, 'length'), 0)
    await ok(store, 'close')
  })

  it('a mixed workload: every session set is heard exactly once when it leaves', async function () {
    const r = recorder()
    const store = new Store({ checkPeriod: 5, max: 300, dispose: r.dispose })
    const written = new Map() // id -> number of values written
    let next = 0
    for (let round = 0; round < 20; round++) {
      for (let i = 0; i < 50; i++) {
        const id = `m${next++}`
        await ok(store, 'set', id, sess(20 + (i % 3) * 40, { round }))
        written.set(id, 1)
      }
      for (let i = 0; i < 10; i++) {
        const id = `m${Math.floor(Math.random() * next)}`
        const [, found] = await call(store, 'get', id)
        if (found) {
          await ok(store, 'set', id, sess(60000, { again: true }))
          written.set(id, written.get(id) + 1)
        }
      }
      await ok(store, 'destroy', [`m${next - 1}`, `m${next - 2}`])
      await sleep(5)
    }
    await ok(store, 'clear')
    await sleep(300)
    // Every value written leaves exactly once: as 'replaced' if a later write found it live,
    // else as expired, evicted, destroyed or cleared (a value can expire between the get that
    // found it and the set that follows, so which of the two is not predicted here).
    const counts = countBy(r.heard)
    let total = 0
    for (const [id, values] of written) {
      const causes = ['replaced', 'expired', 'evicted', 'destroyed', 'cleared'].map((c) => counts.get(`${id}:${c}`) || 0)
      assert.strictEqual(causes.reduce((a, b) => a + b, 0), values, `${id}: each of its ${values} values left once`)
      assert.ok(causes[0] <= values - 1, `${id}: its last value was not replaced`)
      total += values
    }
    assert.strictEqual(r.heard.length, total)
    await ok(store, 'close')
  })

  it('a dispose that throws: the other removals are still delivered, the error reaches the process', async function () {
    const result = await node(`
      const Store = require('.')(require('express-session'))
      const heard = []
      const store = new Store({ dispose: (id) => { heard.push(id); if (id === 'b') throw new Error('dispose failed') } })
      const errors = []
      process.on('uncaughtException', (err) => errors.push(err.message))
      const s = { cookie: { maxAge: 60000 } }
      for (const id of ['a', 'b', 'c']) store.set(id, s)
      store.clear(() => {
        store.set('d', s, () => {
          store.length((err, n) => console.log(JSON.stringify({ heard: heard.sort(), errors, n })))
        })
      })`)
    assert.strictEqual(result.code, 0, result.stderr)
    assert.deepStrictEqual(JSON.parse(result.stdout), { heard: ['a', 'b', 'c'], errors: ['dispose failed'], n: 1 })
  })

  it('a value the serializer returned as a Buffer is heard as a Buffer', async function () {
    const r = recorder()
    const store = new Store({ dispose: r.dispose, serializer: { stringify: (s) => Buffer.from(JSON.stringify(s)), parse: (b) => JSON.parse(b) } })
    await ok(store, 'set', 'a', sess())
    await ok(store, 'destroy', 'a')
    assert.ok(Buffer.isBuffer(r.heard[0].value))
    assert.strictEqual(JSON.parse(r.heard[0].value).cookie.originalMaxAge, 60000)
    await ok(store, 'close')
  })
})
