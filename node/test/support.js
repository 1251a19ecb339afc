'use strict'

// Helpers shared by the tests: the store class, promisified store calls, a loopback HTTP
// server, a client with a cookie jar, child processes, and polling with a deadline.

const http = require('http')
const { execFile } = require('child_process')
const path = require('path')
const session = require('express-session')

const PACKAGE = path.join(__dirname, '..')
const Store = require(PACKAGE)(session)

/** Calls `store[method](...args, cb)` and resolves with the callback's arguments. */
function call (store, method, ...args) {
  return new Promise((resolve) => {
    store[method](...args, (...results) => resolve(results))
  })
}

/** Like `call`, rejecting on an error and resolving with the value. */
async function ok (store, method, ...args) {
  const [err, value] = await call(store, method, ...args)
  if (err) throw err
  return value
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** Polls `check` until it returns a truthy value; fails after `ms`. */
async function eventually (check, ms = 5000, what = 'condition') {
  const deadline = Date.now() + ms
  for (;;) {
    const value = await check()
    if (value) return value
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`)
    await sleep(10)
  }
}

/** An express-session-shaped session whose cookie expires in `ms`. */
function sess (ms = 60000, data = {}) {
  return {
    cookie: { originalMaxAge: ms, expires: new Date(Date.now() + ms).toISOString(), httpOnly: true, path: '/' },
    ...data
  }
}

/** Serves `app` on 127.0.0.1 on a free port. */
function serve (app) {
  return new Promise((resolve, reject) => {
    const server = http.createServer(app)
    server.on('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address()
      resolve({
        url: `http://127.0.0.1:${port}`,
        close: () => new Promise((resolve) => {
          server.closeAllConnections()
          server.close(() => resolve())
        })
      })
    })
  })
}

/** A browser stand-in: remembers the cookies the server sets, sends them back. */
class Client {
  constructor (base) {
    this.base = base
    this.cookies = new Map()
  }

  async get (path) {
    const headers = {}
    if (this.cookies.size) {
      headers.cookie = [...this.cookies].map(([k, v]) => `${k}=${v}`).join('; ')
    }
    const res = await fetch(this.base + path, { headers, redirect: 'manual' })
    const setCookies = res.headers.getSetCookie()
    for (const line of setCookies) {
      const [pair] = line.split(';')
      const at = pair.indexOf('=')
      this.cookies.set(pair.slice(0, at), pair.slice(at + 1))
    }
    const text = await res.text()
    let body = text
    try {
      body = JSON.parse(text)
    } catch (_) {}
    return { status: res.status, body, setCookies }
  }

  /** The session id in the cookie `name` (express-session signs it: `s:<id>.<signature>`). */
  sid (name = 'connect.sid') {
    const raw = this.cookies.get(name)
    if (!raw) return undefined
    const value = decodeURIComponent(raw)
    return value.slice(2, value.lastIndexOf('.'))
  }
}

/** Runs `node -e script` in this package's directory; resolves with { code, stdout, stderr }. */
function node (script, options = {}) {
  return new Promise((resolve) => {
    execFile(process.execPath, ['-e', script], { cwd: PACKAGE, timeout: 30000, ...options }, (err, stdout, stderr) => {
      resolve({ code: err ? (err.code ?? 1) : 0, signal: err && err.signal, stdout, stderr })
    })
  })
}

module.exports = { PACKAGE, Store, session, call, ok, sleep, eventually, sess, serve, Client, node }
