'use strict'

// One benchmark server: Express 5 + express-session's counter app on one store, in its own
// process (started by bench/run.js with an IPC channel and --expose-gc).
//
//   node --expose-gc bench/app.js <express|memorystore|evanesce|none> <prefill> <checkPeriodMs>
//
// It prefills <prefill> sessions through the store's own set (express-session-shaped, one-day
// cookies), reports progress, then listens on 127.0.0.1 and answers the orchestrator's
// messages: 'start' (reset the event-loop delay histogram and the CPU clock) and 'stop'
// (report them with the heap, RSS and the number of live sessions, measured after a full GC).

const { monitorEventLoopDelay } = require('perf_hooks')
const express = require('express')
const session = require('express-session')

const [kind, prefillArg, checkPeriodArg] = process.argv.slice(2)
const prefill = Number(prefillArg || 0)
const checkPeriod = Number(checkPeriodArg || 1000)

function gcAndMeasure () {
  global.gc()
  global.gc()
  const { heapUsed, rss } = process.memoryUsage()
  return { heapUsed, rss }
}

const base = gcAndMeasure()

let store
let live
if (kind === 'express') {
  store = new session.MemoryStore()
  // express-session's own length() walks every session (and expires them on the way).
  live = (cb) => cb(Object.keys(store.sessions).length)
} else if (kind === 'memorystore') {
  const MemoryStore = require('memorystore')(session)
  store = new MemoryStore({ checkPeriod })
  live = (cb) => cb(store.store.itemCount)
} else if (kind === 'evanesce') {
  const EvanesceStore = require('..')(session)
  store = new EvanesceStore({ checkPeriod })
  live = (cb) => store.length((err, n) => cb(err ? -1 : n))
} else if (kind === 'none') {
  // The control: the same app without express-session (the floor of this machine).
  store = null
  live = (cb) => cb(0)
} else {
  throw new Error(`unknown store ${kind}`)
}

const DAY = 86400000
function prefillSessions (n) {
  if (!store) return
  const step = 1000000
  for (let i = 0; i < n; i++) {
    const sid = 'p' + i.toString(36).padStart(31, '0')
    store.set(sid, {
      cookie: { originalMaxAge: DAY, expires: new Date(Date.now() + DAY).toISOString(), httpOnly: true, path: '/' },
      views: 1
    })
    if ((i + 1) % step === 0) process.send({ prefilled: i + 1 })
  }
}

const app = express()
app.disable('x-powered-by')
if (store) {
  app.use(session({
    store,
    secret: 'benchmark secret',
    resave: false,
    saveUninitialized: false,
    cookie: { maxAge: DAY }
  }))
}
let counter = 0
app.get('/', (req, res) => {
  if (!req.session) return res.type('text').send(`views: ${++counter}\n`)
  req.session.views = (req.session.views || 0) + 1
  res.type('text').send(`views: ${req.session.views}\n`)
})

const delay = monitorEventLoopDelay({ resolution: 10 })
let cpuAtStart

function main () {
  prefillSessions(prefill)
  const server = app.listen(0, '127.0.0.1', () => {
    process.send({ ready: true, port: server.address().port })
  })
  server.keepAliveTimeout = 60000
  process.on('message', (m) => {
    if (m === 'start') {
      delay.reset()
      delay.enable()
      cpuAtStart = process.cpuUsage()
      process.send({ started: true })
    } else if (m === 'stop') {
      delay.disable()
      // CPU time of the whole process (every thread: the engine's too) during the window.
      const cpu = process.cpuUsage(cpuAtStart)
      const cpuMicros = cpu.user + cpu.system
      const eventLoopP99 = delay.percentile(99) / 1e6
      const eventLoopMax = delay.max / 1e6
      live((sessions) => {
        const end = gcAndMeasure()
        process.send({
          stopped: true,
          cpuMicros,
          eventLoopP99,
          eventLoopMax,
          sessions,
          heapPerSession: (end.heapUsed - base.heapUsed) / Math.max(1, sessions),
          rssPerSession: (end.rss - base.rss) / Math.max(1, sessions),
          heapUsed: end.heapUsed,
          rss: end.rss
        })
      })
    } else if (m === 'exit') {
      process.exit(0)
    }
  })
}

main()
