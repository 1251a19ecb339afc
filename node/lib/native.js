'use strict'

// Loads the addon that `npm run build` (napi build --platform) put in ../native: the file
// for this platform and architecture (on Linux there may be a glibc and a musl build; the
// first that loads wins).

const fs = require('fs')
const path = require('path')

const dir = path.join(__dirname, '..', 'native')
const prefix = `evanesce-session.${process.platform}-${process.arch}`

function load () {
  let files = []
  try {
    files = fs.readdirSync(dir).filter((f) => f.startsWith(prefix) && f.endsWith('.node'))
  } catch (_) {}
  const errors = []
  for (const file of files.sort()) {
    try {
      return require(path.join(dir, file))
    } catch (err) {
      errors.push(`${file}: ${err.message}`)
    }
  }
  const why = errors.length ? errors.join('; ') : `no ${prefix}*.node in ${dir}`
  throw new Error(`evanesce-session: the native addon could not be loaded (${why}); build it with \`npm run build\` (needs Rust)`)
}

module.exports = load()
