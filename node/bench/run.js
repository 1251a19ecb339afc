'use strict'

// The benchmark of node/README.md: Express 5 + express-session's counter app, one server
// process per store (express-session's MemoryStore, memorystore, evanesce-session), loaded by
// autocannon from this process over loopback with 64 connections. Runs are interleaved (the
// order of the stores rotates each round) and each figure is the median of the rounds.
//
//   node bench/run.js [--rounds 3] [--duration 30] [--workloads new,million,ten-million,returning]
//                     [--check-period 1000] [--json results.json]
//
// Workloads:
//   new          new visitors (no cookie: every request creates a session), empty store; with a
//                control: the same app without express-session, the floor of the machine
//   million      new visitors, 1M live sessions set through the store before the run
//   ten-million  new visitors, 10M live sessions, Node's default heap limit (express-session's
//                MemoryStore is left out: past 2^23 sessions each of its inserts takes seconds)
//   returning    returning visitors: 64 sessions, one cookie per connection
//   million-paced  as million, but at a fixed 1,000 req/s in all (not saturating the server):
//                the event-loop delay then shows what the store adds, not the length of a
//                saturated server's loop turns (with 64 requests always ready, a turn serves
//                all 64, and a timer waits for the whole turn whatever the store)
//
// Figures per run: req/s, the server's CPU time per request (user + system, all of its threads:
// on a shared machine it moves less than req/s with the load of other processes), latency
// p50/p99 (autocannon), event-loop delay p99 of the server
// (perf_hooks.monitorEventLoopDelay, 10 ms resolution, during the measured window), and the
// server's JS heap and RSS growth per live session, measured after a full GC at the end against
// the same process before it held any session.

const path = require('path')
const { fork } = require('child_process')
const autocannon = require('autocannon')

function arg (name, fallback) {
  const at = process.argv.indexOf(`--${name}`)
  return at === -1 ? fallback : process.argv[at + 1]
}

const rounds = Number(arg('rounds', 3))
const duration = Number(arg('duration', 30))
const checkPeriod = Number(arg('check-period', 1000))
const workloads = arg('workloads', 'new,million,ten-million,returning').split(',')
const jsonOut = arg('json', undefined)
const CONNECTIONS = 64
const WARMUP = 3

const STORES = {
  none: 'no sessions (control: the app alone)',
  express: 'express-session MemoryStore',
  memorystore: 'memorystore 1.6.8',
  evanesce: 'evanesce-session'
}

const WORKLOADS = {
  new: { title: 'new visitors, empty store', prefill: 0, stores: ['none', 'express', 'memorystore', 'evanesce'] },
  million: { title: 'new visitors, 1M live sessions', prefill: 1e6, stores: ['express', 'memorystore', 'evanesce'] },
  'ten-million': { title: 'new visitors, 10M live sessions, default heap limit', prefill: 1e7, stores: ['memorystore', 'evanesce'] },
  returning: { title: 'returning visitors (64 cookies)', prefill: 0, stores: ['express', 'memorystore', 'evanesce'], returning: true },
  'million-paced': { title: 'new visitors at 1,000 req/s, 1M live sessions', prefill: 1e6, stores: ['express', 'memorystore', 'evanesce'], rate: 1000 }
}

const log = (...a) => console.error(new Date().toISOString().slice(11, 19), ...a)

/** Starts a server; resolves with { child, port } or rejects with why it did not start. */
function startServer (store, prefill) {
  return new Promise((resolve, reject) => {
    const child = fork(path.join(__dirname, 'app.js'), [store, String(prefill), String(checkPeriod)], {
      execArgv: ['--expose-gc'],
      stdio: ['ignore', 'ignore', 'pipe', 'ipc']
    })
    let stderr = ''
    let oom = false
    let prefilled = 0
    child.stderr.on('data', (d) => {
      stderr = (stderr + d).slice(-2000)
      oom = oom || /heap out of memory|Allocation failed/i.test(stderr)
    })
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`prefill did not finish in 15 min (${prefilled} sessions)`))
    }, 15 * 60 * 1000)
    child.on('message', (m) => {
      if (m.prefilled) {
        prefilled = m.prefilled
        log(`  ${store}: ${m.prefilled / 1e6}M sessions`)
      } else if (m.ready) {
        clearTimeout(timer)
        resolve({ child, port: m.port })
      }
    })
    child.on('exit', (code, signal) => {
      clearTimeout(timer)
      reject(new Error(oom
        ? `out of memory after ${prefilled / 1e6}M sessions`
        : `exited (${signal || code}) after ${prefilled} sessions: ${stderr.trim().split('\n').slice(-3).join(' | ')}`))
    })
  })
}

function ask (child, message, reply) {
  return new Promise((resolve, reject) => {
    const onMessage = (m) => {
      if (m[reply]) {
        child.off('message', onMessage)
        child.off('exit', onExit)
        resolve(m)
      }
    }
    const onExit = (code, signal) => reject(new Error(`server exited (${signal || code})`))
    child.on('message', onMessage)
    child.on('exit', onExit)
    child.send(message)
  })
}

function cannon (port, seconds, cookies, rate) {
  return new Promise((resolve, reject) => {
    let next = 0
    const options = { url: `http://127.0.0.1:${port}/`, connections: CONNECTIONS, duration: seconds }
    if (rate) options.overallRate = rate
    if (cookies) {
      options.setupClient = (client) => client.setHeaders({ cookie: cookies[next++ % cookies.length] })
    }
    autocannon(options, (err, result) => (err ? reject(err) : resolve(result)))
  })
}

/** Creates `n` sessions over HTTP and returns their cookies. */
async function sessionCookies (port, n) {
  const cookies = []
  for (let i = 0; i < n; i++) {
    const res = await fetch(`http://127.0.0.1:${port}/`)
    cookies.push(res.headers.getSetCookie()[0].split(';')[0])
  }
  return cookies
}

async function runOne (workload, store) {
  const w = WORKLOADS[workload]
  let server
  try {
    server = await startServer(store, w.prefill)
  } catch (err) {
    return { failed: err.message }
  }
  try {
    const cookies = w.returning ? await sessionCookies(server.port, CONNECTIONS) : undefined
    await cannon(server.port, WARMUP, cookies, w.rate)
    await ask(server.child, 'start', 'started')
    const result = await cannon(server.port, duration, cookies, w.rate)
    const stats = await ask(server.child, 'stop', 'stopped')
    return {
      reqPerSec: result.requests.average,
      p50: result.latency.p50,
      p99: result.latency.p99,
      max: result.latency.max,
      errors: result.errors + result.timeouts + result.non2xx,
      cpuPerRequest: stats.cpuMicros / Math.max(1, result.requests.total),
      eventLoopP99: stats.eventLoopP99,
      eventLoopMax: stats.eventLoopMax,
      sessions: stats.sessions,
      heapPerSession: stats.heapPerSession,
      rssPerSession: stats.rssPerSession,
      heapUsed: stats.heapUsed,
      rss: stats.rss
    }
  } catch (err) {
    return { failed: err.message }
  } finally {
    server.child.kill('SIGKILL')
  }
}

const median = (xs) => {
  const s = xs.filter((x) => typeof x === 'number' && !Number.isNaN(x)).sort((a, b) => a - b)
  if (!s.length) return undefined
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2
}

const fmt = (x, digits = 0) => (x === undefined ? '-' : x.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits }))

async function main () {
  const results = {}
  for (const workload of workloads) {
    const w = WORKLOADS[workload]
    if (!w) throw new Error(`unknown workload ${workload}`)
    results[workload] = {}
    for (const store of w.stores) results[workload][store] = []
    for (let round = 0; round < rounds; round++) {
      const order = w.stores.map((_, i) => w.stores[(i + round) % w.stores.length])
      for (const store of order) {
        log(`${workload} round ${round + 1}/${rounds}: ${store}`)
        const r = await runOne(workload, store)
        log('  ', r.failed ? `FAILED: ${r.failed}` : `${fmt(r.reqPerSec)} req/s, ${fmt(r.cpuPerRequest)} µs CPU/request, p99 ${r.p99} ms, event loop p99 ${fmt(r.eventLoopP99, 1)} ms, heap ${fmt(r.heapPerSession)} B/session, rss ${fmt(r.rssPerSession)} B/session, ${r.sessions} sessions, ${r.errors} errors`)
        results[workload][store].push(r)
      }
    }
  }
  if (jsonOut) require('fs').writeFileSync(jsonOut, JSON.stringify({ rounds, duration, checkPeriod, results }, null, 2))

  const lines = []
  lines.push('| workload | store | req/s | server CPU µs/request | p50 ms | p99 ms | event-loop p99 ms | JS heap B/session | RSS B/session | live sessions |')
  lines.push('|---|---|---:|---:|---:|---:|---:|---:|---:|---:|')
  for (const workload of workloads) {
    for (const store of WORKLOADS[workload].stores) {
      const runs = results[workload][store]
      const ok = runs.filter((r) => !r.failed)
      const failed = runs.filter((r) => r.failed)
      const m = (k) => median(ok.map((r) => r[k]))
      if (!ok.length) {
        lines.push(`| ${WORKLOADS[workload].title} | ${STORES[store]} | ${failed[0].failed}${failed.length > 1 ? ` (${failed.length} of ${runs.length} runs)` : ''} | | | | | | | |`)
        continue
      }
      const perSession = (k) => (m('sessions') ? fmt(m(k)) : '-')
      const note = failed.length ? ` (${failed.length} of ${runs.length} runs failed: ${failed[0].failed})` : ''
      lines.push(`| ${WORKLOADS[workload].title} | ${STORES[store]}${note} | ${fmt(m('reqPerSec'))} | ${fmt(m('cpuPerRequest'))} | ${fmt(m('p50'))} | ${fmt(m('p99'))} | ${fmt(m('eventLoopP99'), 1)} | ${perSession('heapPerSession')} | ${perSession('rssPerSession')} | ${fmt(m('sessions'))} |`)
    }
  }
  console.log(lines.join('\n'))
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
