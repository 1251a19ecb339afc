'use strict'

// express-session's quickstart on evanesce-session: a view counter, /logout, and /stats
// (live sessions and memory). Run it with `npm run example` (after `npm ci`), then:
//
//   curl -c jar -b jar http://127.0.0.1:3000/          # views: 1, 2, 3, ... with the cookie
//   curl -c jar -b jar http://127.0.0.1:3000/logout    # the session is destroyed
//   curl http://127.0.0.1:3000/stats                   # live sessions, JS heap, RSS
//
// Settings (environment; a bad value stops the server with a message naming it):
//   PORT                 port to listen on (default 3000)
//   HOST                 address to listen on (default 127.0.0.1)
//   SESSION_SECRET       the cookie-signing secret (default: a random one per start, so
//                        cookies do not survive a restart; set it in production)
//   SESSION_MAX_AGE_MS   cookie and session lifetime (default 86400000, one day)
//   MAX_SESSIONS         the most sessions held (default: no limit)
//   SNAPSHOT_FILE        keep sessions across restarts in this file (default: none)

const crypto = require('crypto')
const express = require('express')
const session = require('express-session')
const EvanesceStore = require('..')(session)

function setting (name, fallback, parse) {
  const raw = process.env[name]
  if (raw === undefined || raw === '') return fallback
  const value = parse(raw)
  if (value === undefined) {
    console.error(`error: ${name}=${JSON.stringify(raw)} is not valid`)
    process.exit(2)
  }
  return value
}
const integer = (min, max) => (raw) => {
  const n = Number(raw)
  return Number.isInteger(n) && n >= min && n <= max ? n : undefined
}

const port = setting('PORT', 3000, integer(0, 65535))
const host = setting('HOST', '127.0.0.1', (raw) => raw)
const maxAge = setting('SESSION_MAX_AGE_MS', 86400000, integer(1000, 2 ** 31))
const max = setting('MAX_SESSIONS', undefined, integer(1, 2 ** 40))
const snapshotFile = setting('SNAPSHOT_FILE', undefined, (raw) => raw)
const secret = setting('SESSION_SECRET', undefined, (raw) => (raw.length >= 16 ? raw : undefined))
if (secret === undefined) {
  console.warn('SESSION_SECRET is not set: using a random secret, so cookies will not survive a restart')
}

const store = new EvanesceStore({
  checkPeriod: 60000, // a sweeper thread, off the event loop; expiry does not depend on it
  max,
  snapshotFile
})

const app = express()
app.disable('x-powered-by')
app.use(session({
  store,
  secret: secret || crypto.randomBytes(32).toString('hex'),
  resave: false,
  saveUninitialized: false,
  cookie: { maxAge, httpOnly: true, sameSite: 'lax' }
}))

app.get('/', (req, res) => {
  req.session.views = (req.session.views || 0) + 1
  res.type('text').send(`views: ${req.session.views}\n`)
})

app.get('/logout', (req, res, next) => {
  req.session.destroy((err) => {
    if (err) return next(err)
    res.clearCookie('connect.sid')
    res.type('text').send('logged out\n')
  })
})

app.get('/stats', (req, res, next) => {
  store.length((err, sessions) => {
    if (err) return next(err)
    const { rss, heapUsed } = process.memoryUsage()
    res.json({ sessions, rss, heapUsed, store: store.stats() })
  })
})

app.use((err, req, res, next) => {
  console.error(err)
  res.status(500).type('text').send('internal error\n')
})

const server = app.listen(port, host, () => {
  const { address, port } = server.address()
  console.log(`listening on http://${address}:${port}${snapshotFile ? ` (sessions kept in ${snapshotFile})` : ''}`)
})
server.on('error', (err) => {
  console.error(`error: cannot listen on ${host}:${port}: ${err.message}`)
  process.exit(1)
})
// Slow or idle clients do not hold connections open forever.
server.headersTimeout = 10000
server.requestTimeout = 30000
server.keepAliveTimeout = 5000

let stopping = false
function shutdown (signal) {
  if (stopping) return
  stopping = true
  console.log(`${signal}: stopping`)
  const force = setTimeout(() => {
    console.error('could not stop within 10 s: exiting without saving sessions')
    process.exit(1)
  }, 10000)
  force.unref()
  server.close(() => {
    store.close((err, saved) => {
      if (err) {
        console.error(`sessions NOT saved: ${err.message}`)
        process.exit(1)
      }
      if (saved !== undefined) console.log(`saved ${saved} sessions to ${snapshotFile}`)
      process.exit(0)
    })
  })
  server.closeIdleConnections()
}
process.on('SIGINT', () => shutdown('SIGINT'))
process.on('SIGTERM', () => shutdown('SIGTERM'))
