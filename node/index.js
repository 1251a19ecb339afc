module.exports = require('./lib/evanesce-session.js')
