// MCP server (the upstream behind tollgate) for tollgate's protected-resource
// test. Usage: `node server.mjs PORT`; listens on 127.0.0.1:PORT only, MCP
// endpoint at /mcp, prints `READY` once listening, exits 0 on SIGTERM/SIGINT.
//
// Stateless Streamable HTTP with plain JSON responses: every POST gets a fresh
// McpServer and transport, so no session state is kept. GET (the optional SSE
// stream) and DELETE (session end) are answered 405, which the SDK's client
// accepts as "not offered".
//
// One tool, `whoami` (no arguments), answers with what tollgate forwarded:
//   {"subject": <x-auth-subject header or null>, "authorization": <bool>}
// where `authorization` says whether an Authorization header reached us
// (tollgate should strip it).
import { createServer } from 'node:http';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';

const port = Number.parseInt(process.argv[2], 10);
if (!(port > 0 && port < 65536)) {
  console.error('usage: node server.mjs PORT');
  process.exit(2);
}

// A new MCP server per request (stateless mode).
function mcpServer() {
  const server = new McpServer({ name: 'tollgate-it-mcp', version: '1.0.0' });
  server.registerTool(
    'whoami',
    { description: 'Who the gateway says the caller is' },
    // The transport hands the HTTP request's headers (lower-cased) to handlers.
    async (extra) => {
      const headers = extra.requestInfo?.headers ?? {};
      const answer = {
        subject: headers['x-auth-subject'] ?? null,
        authorization: headers.authorization !== undefined,
      };
      return { content: [{ type: 'text', text: JSON.stringify(answer) }] };
    },
  );
  return server;
}

const http = createServer(async (req, res) => {
  const path = new URL(req.url, 'http://localhost').pathname;
  if (path !== '/mcp') {
    res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
    return;
  }
  if (req.method !== 'POST') {
    res.writeHead(405, { allow: 'POST', 'content-type': 'text/plain' }).end('method not allowed\n');
    return;
  }
  const server = mcpServer();
  // No sessionIdGenerator: stateless. enableJsonResponse: answer with one JSON body, not SSE.
  const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined, enableJsonResponse: true });
  res.on('close', () => {
    transport.close();
    server.close();
  });
  try {
    await server.connect(transport);
    await transport.handleRequest(req, res);
  } catch (err) {
    console.error('mcp request failed:', err);
    if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' }).end('internal error\n');
  }
});

http.listen(port, '127.0.0.1', () => {
  console.log('READY');
});

function shutdown() {
  http.close(() => process.exit(0));
  http.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
