'use strict'

// memorystore's own test suite, run against this package: the file is read at test time from
// the memorystore package the registry shipped (node_modules/memorystore/test/store.js, a
// devDependency pinned in package-lock.json), never copied into this repository. Its
// `require('../')` is redirected to this package, and one assertion is changed (below); then
// its describe/it blocks are registered with this mocha run.

const fs = require('fs')
const os = require('os')
const path = require('path')
const assert = require('assert')

const original = fs.readFileSync(require.resolve('memorystore/test/store.js'), 'utf8')
const pkg = path.join(__dirname, '..')

const REQUIRE = "require('../')"
assert.strictEqual(original.split(REQUIRE).length, 2, 'memorystore test/store.js: one require line to redirect')
let source = original.replace(REQUIRE, `require(${JSON.stringify(pkg)})`)

// The one adaptation. memorystore's test 'automatic check for expired entries should be
// disabled' sets two sessions of maxAge 150 ms with no checkPeriod and asserts that
// length() still counts both 500 ms later: it pins down memorystore's leak (expired
// sessions stay until something walks them). This store reclaims expired sessions on its own
// and counts live sessions only (DESIGN.md: "ids() and length() count live sessions only,
// deliberately unlike memorystore"), so the assertion is inverted: both must be gone.
const LEAK = "assert.strictEqual(count, 2, 'expired entries should not be pruned')"
assert.strictEqual(source.split(LEAK).length, 2, 'memorystore test/store.js: the leak assertion to adapt')
source = source.replace(LEAK, "assert.strictEqual(count, 0, 'expired entries leave without a periodic check')")

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'evanesce-memorystore-'))
const file = path.join(dir, 'store.js')
fs.writeFileSync(file, source)
try {
  require(file)
} finally {
  fs.rmSync(dir, { recursive: true, force: true })
}
