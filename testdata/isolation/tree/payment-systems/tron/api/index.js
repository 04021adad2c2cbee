module.exports = { tron: true };
