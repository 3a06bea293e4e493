'use strict';
/*
 * A real GraphQL server for the graphql job type's tests: graphql-js (Debian's node-graphql, run
 * with NODE_PATH=/usr/share/nodejs) behind node's own http module, nothing from npm. Listens on
 * 127.0.0.1, on a free port, and prints "PORT <n>" as the first line of stdout once it accepts
 * connections (graphql_server.c waits for that line).
 *
 *   POST /graphql  {query, variables, operationName} -> 200 with graphql()'s {data, errors}
 *                  (syntax and validation errors included); 400 {errors} when the body is not
 *                  a JSON object with a string query; 413 over 1 MiB
 *   GET /health    200 ok
 */
const http = require('http');
const { graphql, buildSchema } = require('graphql');

const BODY_MAX = 1024 * 1024;

const schema = buildSchema(`
  type Item { id: ID!, name: String!, price: Float! }
  type Query {
    hello(name: String): String
    items(min: Float): [Item!]!
    boom: String
    slow(ms: Int!): Int
  }
  type Mutation { add(a: Int!, b: Int!): Int! }
`);

const ITEMS = [
  { id: '1', name: 'apple', price: 0.5 },
  { id: '2', name: 'bread', price: 2.25 },
  { id: '3', name: 'cheese', price: 7.0 },
];

const root = {
  hello: ({ name }) => `hello ${name ?? 'world'}`,
  items: ({ min }) => ITEMS.filter((item) => min == null || item.price >= min),
  boom: () => {
    throw new Error('boom failed');
  },
  slow: ({ ms }) => new Promise((resolve) => setTimeout(() => resolve(ms), ms)),
  add: ({ a, b }) => a + b,
};

function send(res, status, type, body) {
  res.writeHead(status, { 'Content-Type': type, 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

function sendJson(res, status, value) {
  send(res, status, 'application/json', JSON.stringify(value));
}

function badRequest(res, message) {
  sendJson(res, 400, { errors: [{ message }] });
}

async function execute(res, text) {
  let req;
  try {
    req = JSON.parse(text);
  } catch (e) {
    return badRequest(res, `body is not JSON: ${e.message}`);
  }
  if (req === null || typeof req !== 'object' || Array.isArray(req) || typeof req.query !== 'string')
    return badRequest(res, 'body must be a JSON object with a string "query"');
  if (req.variables != null && (typeof req.variables !== 'object' || Array.isArray(req.variables)))
    return badRequest(res, '"variables" must be an object');
  const result = await graphql({
    schema,
    source: req.query,
    rootValue: root,
    variableValues: req.variables,
    operationName: req.operationName,
  });
  sendJson(res, 200, result);
}

const server = http.createServer((req, res) => {
  const path = req.url.split('?')[0];
  if (path === '/health' && (req.method === 'GET' || req.method === 'HEAD'))
    return send(res, 200, 'text/plain', 'ok');
  if (path !== '/graphql')
    return sendJson(res, 404, { errors: [{ message: 'not found' }] });
  if (req.method !== 'POST') {
    res.setHeader('Allow', 'POST');
    return sendJson(res, 405, { errors: [{ message: 'use POST' }] });
  }
  const chunks = [];
  let size = 0;
  req.on('data', (chunk) => {
    size += chunk.length;
    if (size <= BODY_MAX)
      chunks.push(chunk);
  });
  req.on('end', () => {
    if (size > BODY_MAX)
      return sendJson(res, 413, { errors: [{ message: 'body too large' }] });
    execute(res, Buffer.concat(chunks).toString('utf8')).catch((e) => {
      process.stderr.write(`graphql_server: ${e.stack}\n`);
      if (!res.headersSent)
        sendJson(res, 500, { errors: [{ message: String(e.message) }] });
    });
  });
});

// bw_test_graphql_server_stop's SIGTERM ends the process at once, open connections or not.
process.on('SIGTERM', () => process.exit(0));

server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`PORT ${server.address().port}\n`);
});
