'use strict'

// index.d.ts compiles, and is strict enough to reject bad options (test/fixtures/types.ts
// holds @ts-expect-error lines that fail the compilation if the types accept them).

const assert = require('assert')
const path = require('path')
const { execFileSync } = require('child_process')

describe('TypeScript definitions', function () {
  it('index.d.ts types a typical setup and rejects bad options', function () {
    const tsc = require.resolve('typescript/bin/tsc')
    const fixture = path.join(__dirname, 'fixtures', 'types.ts')
    let output = ''
    try {
      execFileSync(process.execPath, [tsc, '--noEmit', '--strict', '--esModuleInterop', '--skipLibCheck', '--types', 'node', fixture], { encoding: 'utf8' })
    } catch (err) {
      output = `${err.stdout}${err.stderr}`
    }
    assert.strictEqual(output, '')
  })
})
