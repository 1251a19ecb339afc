'use strict'

// `name`: stores opened with one name in several worker_threads of a process share one
// engine store.

const assert = require('assert')
const path = require('path')
const { Worker } = require('worker_threads')
const { Store, ok, sleep, eventually, sess, Client } = require('./support')

/** A worker running test/fixtures/store-worker.js; `run(method, ...args)` calls its store. */
function storeWorker (options, dispose = false) {
  const worker = new Worker(path.join(__dirname, 'fixtures', 'store-worker.js'), { workerData: { options, dispose } })
  const pending = new Map()
  let next = 0
  const ready = new Promise((resolve, reject) => {
    worker.once('error', reject)
    worker.on('message', (m) => {
      if (m.ready) resolve()
      else if (m.error) reject(Object.assign(new Error(m.error.message), { name: m.error.name }))
      else {
        pending.get(m.id)(m.result)
        pending.delete(m.id)
      }
    })
  })
  return {
    worker,
    ready,
    run (method, ...args) {
      const id = next++
      return new Promise((resolve) => {
        pending.set(id, resolve)
        worker.postMessage({ id, method, args })
      })
    },
    stop: () => worker.terminate()
  }
}

describe('worker_threads sharing one store by name', function () {
  it('sessions set in any thread are seen by all; length and ids count them once', async function () {
    const main = new Store({ name: 'share-basic' })
    await ok(main, 'set', 'main-1', sess(60000, { from: 'main' }))
    const workers = [storeWorker({ name: 'share-basic' }), storeWorker({ name: 'share-basic' })]
    await Promise.all(workers.map((w) => w.ready))

    await Promise.all(workers.map(async (w, i) => {
      for (let j = 0; j < 100; j++) {
        const [err] = await w.run('set', `w${i}-${j}`, sess(60000, { from: `worker ${i}` }))
        assert.strictEqual(err, null)
      }
    }))
    const [, fromMain] = await workers[0].run('get', 'main-1')
    assert.strictEqual(fromMain.from, 'main')
    const [, fromOther] = await workers[1].run('get', 'w0-99')
    assert.strictEqual(fromOther.from, 'worker 0')
    assert.strictEqual((await ok(main, 'get', 'w1-5')).from, 'worker 1')
    assert.strictEqual(await ok(main, 'length'), 201)
    const [, n] = await workers[1].run('length')
    assert.strictEqual(n, 201)
    assert.strictEqual((await ok(main, 'ids')).length, 201)

    const [, destroyed] = await workers[0].run('destroy', 'main-1')
    assert.strictEqual(destroyed, undefined)
    assert.strictEqual(await ok(main, 'get', 'main-1'), undefined)

    await Promise.all(workers.map((w) => w.stop()))
    // The workers' stores are gone with their threads; the engine store stays with main.
    assert.strictEqual(await ok(main, 'length'), 200)
    await ok(main, 'close')
  })

  it('stores without a name, or with another name, do not share', async function () {
    const main = new Store({ name: 'share-a' })
    await ok(main, 'set', 'x', sess())
    const unnamed = storeWorker({})
    const other = storeWorker({ name: 'share-b' })
    await Promise.all([unnamed.ready, other.ready])
    assert.deepStrictEqual(await unnamed.run('length'), [null, 0])
    assert.deepStrictEqual(await other.run('length'), [null, 0])
    await Promise.all([unnamed.stop(), other.stop()])
    await ok(main, 'close')
  })

  it('a worker whose options disagree with the shared store gets a TypeError', async function () {
    const main = new Store({ name: 'share-disagree', max: 10 })
    const w = storeWorker({ name: 'share-disagree', max: 11 })
    await assert.rejects(w.ready, (err) => err.name === 'TypeError' && /options\.max/.test(err.message))
    await w.stop()
    await ok(main, 'close')
  })

  it('each removal is heard once in the process: by the store whose call caused it, else by the oldest store with a dispose', async function () {
    const mainHeard = []
    const main = new Store({ name: 'share-dispose', checkPeriod: 10, dispose: (id, v, cause) => mainHeard.push([id, cause]) })
    const w = storeWorker({ name: 'share-dispose', checkPeriod: 10 }, true)
    await w.ready
    // The worker's own destroys are heard in place by the worker.
    await w.run('set', 'by-worker', sess())
    await w.run('destroy', 'by-worker')
    // Expiries on the sweeper's thread go to the oldest subscriber: main.
    for (let i = 0; i < 20; i++) await w.run('set', `exp-${i}`, sess(300))
    await eventually(() => mainHeard.length === 20, 5000, '20 expiries heard by main')
    const [, workerHeard] = await w.run('heard')
    assert.deepStrictEqual(workerHeard, [['by-worker', 'destroyed']])
    assert.ok(mainHeard.every(([id, cause]) => id.startsWith('exp-') && cause === 'expired'))
    assert.strictEqual(new Set(mainHeard.map(([id]) => id)).size, 20)
    await w.stop()
    await ok(main, 'close')
  })

  it('when the oldest store with a dispose goes (its worker ends), the next one hears the removals', async function () {
    const w = storeWorker({ name: 'share-handover', checkPeriod: 10 }, true)
    await w.ready
    const mainHeard = []
    const main = new Store({ name: 'share-handover', checkPeriod: 10, dispose: (id, v, cause) => mainHeard.push([id, cause]) })
    for (let i = 0; i < 10; i++) await ok(main, 'set', `early-${i}`, sess(300))
    await sleep(700)
    const [, workerHeard] = await w.run('heard')
    assert.strictEqual(workerHeard.length, 10, 'the worker, subscribed first, heard the first expiries')
    assert.strictEqual(mainHeard.length, 0)
    await w.stop()
    for (let i = 0; i < 10; i++) await ok(main, 'set', `late-${i}`, sess(30))
    await eventually(() => mainHeard.length === 10, 5000, 'main to hear the expiries once the worker is gone')
    assert.ok(mainHeard.every(([id, cause]) => id.startsWith('late-') && cause === 'expired'))
    await ok(main, 'close')
  })

  it('two Express apps in two workers serve one session between them', async function () {
    const apps = ['A', 'B'].map((label) => new Worker(path.join(__dirname, 'fixtures', 'app-worker.js'), { workerData: { name: 'share-http', label } }))
    const ports = await Promise.all(apps.map((w) => new Promise((resolve, reject) => {
      w.once('error', reject)
      w.once('message', (m) => resolve(m.port))
    })))
    const a = new Client(`http://127.0.0.1:${ports[0]}`)
    assert.deepStrictEqual((await a.get('/')).body, { views: 1, worker: 'A' })
    const b = new Client(`http://127.0.0.1:${ports[1]}`)
    b.cookies = a.cookies // the same browser, another worker
    assert.deepStrictEqual((await b.get('/')).body, { views: 2, worker: 'B' })
    assert.deepStrictEqual((await a.get('/')).body, { views: 3, worker: 'A' })
    await Promise.all(apps.map((w) => new Promise((resolve) => { w.once('exit', resolve); w.postMessage('stop') })))
  })
})
