'use strict';
// The compiled addon (node-gyp rebuild, run by npm install): { punchHole(fd, offset, length) }.
module.exports = require('./build/Release/punch_hole.node');
