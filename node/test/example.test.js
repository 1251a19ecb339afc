'use strict'

// examples/server.js as a user runs it: counter, logout, stats, and a graceful SIGTERM that
// saves the sessions and says so; the sessions are back after a restart.

const assert = require('assert')
const fs = require('fs')
const os = require('os')
const path = require('path')
const { spawn } = require('child_process')
const { Client, eventually } = require('./support')

function start (env) {
  const child = spawn(process.execPath, [path.join(__dirname, '..', 'examples', 'server.js')], {
    env: { ...process.env, PORT: '0', ...env },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let out = ''
  child.stdout.on('data', (d) => { out += d })
  child.stderr.on('data', (d) => { out += d })
  const exited = new Promise((resolve) => child.on('exit', (code) => resolve(code)))
  return {
    child,
    exited,
    output: () => out,
    url: () => eventually(() => (/listening on (http:\/\/\S+)/.exec(out) || [])[1], 10000, 'the server to listen')
  }
}

describe('examples/server.js', function () {
  let dir
  beforeEach(function () { dir = fs.mkdtempSync(path.join(os.tmpdir(), 'evanesce-example-')) })
  afterEach(function () { fs.rmSync(dir, { recursive: true, force: true }) })

  it('counts views per cookie, logs out, reports stats, and keeps sessions across a restart', async function () {
    const env = { SESSION_SECRET: 'a test secret of some length', SNAPSHOT_FILE: path.join(dir, 'sessions.snap') }
    const first = start(env)
    const c = new Client(await first.url())
    for (let i = 1; i <= 3; i++) assert.strictEqual((await c.get('/')).body, `views: ${i}\n`)
    const other = new Client(c.base)
    assert.strictEqual((await other.get('/')).body, 'views: 1\n')
    const stats = (await c.get('/stats')).body
    assert.strictEqual(stats.sessions, 2)
    assert.ok(stats.rss > 0 && stats.heapUsed > 0)
    assert.strictEqual((await other.get('/logout')).body, 'logged out\n')
    assert.strictEqual((await c.get('/stats')).body.sessions, 1)

    first.child.kill('SIGTERM')
    assert.strictEqual(await first.exited, 0, first.output())
    assert.match(first.output(), /saved 1 sessions to /)

    const second = start(env)
    c.base = await second.url()
    assert.strictEqual((await c.get('/')).body, 'views: 4\n')
    second.child.kill('SIGINT')
    assert.strictEqual(await second.exited, 0, second.output())
  })

  it('a bad setting stops it with a message naming the variable', async function () {
    const bad = start({ PORT: 'eighty' })
    assert.strictEqual(await bad.exited, 2)
    assert.match(bad.output(), /PORT="eighty" is not valid/)
  })
})
