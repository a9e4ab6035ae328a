// MCP client (the MCP TypeScript SDK) for tollgate's protected-resource test.
// Usage: `node client.mjs SERVER_URL CLIENT_ID CLIENT_SECRET [SCOPE]`
// where SERVER_URL is the MCP endpoint behind tollgate (http://127.0.0.1:GW/mcp).
//
// Everything OAuth is left to the SDK's own functions; this script only calls
// them in order and reports what happened:
//   a. challenge:  a bare POST (initialize) without a token; the SDK's
//                  extractWWWAuthenticateParams reads the 401's challenge;
//   b. discovery:  the SDK's protected-resource-metadata discovery, then its
//                  authorization-server metadata discovery;
//   c. authorized: an SDK Client whose transport has the SDK's
//                  ClientCredentialsProvider; the SDK itself goes 401 ->
//                  discovery -> token request -> retry. Then tools/list and
//                  tools/call whoami;
//   d. unauthenticated: an SDK Client without any auth provider must fail.
//
// Prints exactly one JSON line on stdout (see `out` below). On failure the
// line also has "error": "<step>: <message>" and the exit status is 1.
// Gives up after 20 s.
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import {
  discoverAuthorizationServerMetadata,
  discoverOAuthProtectedResourceMetadata,
  extractWWWAuthenticateParams,
} from '@modelcontextprotocol/sdk/client/auth.js';
import { ClientCredentialsProvider } from '@modelcontextprotocol/sdk/client/auth-extensions.js';
import { LATEST_PROTOCOL_VERSION } from '@modelcontextprotocol/sdk/types.js';

const [serverUrl, clientId, clientSecret, scope] = process.argv.slice(2);
if (!serverUrl || !clientId || !clientSecret) {
  console.error('usage: node client.mjs SERVER_URL CLIENT_ID CLIENT_SECRET [SCOPE]');
  process.exit(2);
}

// The one JSON line; every field is filled in as its step runs.
const out = {
  challenge_status: null, // a: status of the unauthenticated POST
  www_authenticate: null, // a: its WWW-Authenticate header, verbatim
  resource_metadata_url: null, // a: resource_metadata from it, per the SDK, or null
  challenge_scope: null, // a: scope from it, per the SDK, or null
  challenge_error: null, // a: error from it, per the SDK, or null
  prm: null, // b: the protected resource metadata the SDK discovered
  as_issuer: null, // b: issuer of the authorization server metadata the SDK discovered
  as_token_endpoint: null, // b: its token endpoint
  requests: [], // c: "METHOD URL STATUS" for every HTTP request the SDK made, in order
  token_request: null, // c: the form the SDK posted to the token endpoint (no secrets)
  tools: null, // c: tool names from tools/list
  whoami: null, // c: the whoami tool's answer, parsed
  unauthenticated_error: null, // d: "ErrorClass: message" from connecting without auth
  unauthenticated_error_code: null, // d: the error's code (HTTP status), if it has one
};
let step = 'start';

let finished = false;
function finish(error) {
  if (finished) return;
  finished = true;
  if (error) {
    // Node's fetch hides the reason ("fetch failed") in `cause`.
    const cause = error.cause ? ` (${error.cause.message ?? error.cause})` : '';
    out.error = `${step}: ${error.message ?? String(error)}${cause}`;
  }
  process.stdout.write(`${JSON.stringify(out)}\n`, () => process.exit(error ? 1 : 0));
}

// Never hang: report whatever was reached after 20 s.
setTimeout(() => finish(new Error('timed out after 20 s')), 20_000).unref();

// A fetch for the SDK that records each request (and the token request's
// form, without client credentials) in `out`, then does the real fetch.
async function recordingFetch(url, init = {}) {
  const method = init.method ?? 'GET';
  if (init.body instanceof URLSearchParams && init.body.get('grant_type')) {
    const form = Object.fromEntries(init.body);
    delete form.client_secret;
    delete form.client_assertion;
    out.token_request = form;
  }
  const response = await fetch(url, init);
  out.requests.push(`${method} ${url} ${response.status}`);
  return response;
}

try {
  // a. A bare MCP initialize request without a token.
  step = 'challenge';
  const bare = await fetch(serverUrl, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream' },
    body: JSON.stringify({
      jsonrpc: '2.0',
      id: 1,
      method: 'initialize',
      params: {
        protocolVersion: LATEST_PROTOCOL_VERSION,
        capabilities: {},
        clientInfo: { name: 'tollgate-it-bare', version: '1.0.0' },
      },
    }),
  });
  await bare.body?.cancel();
  out.challenge_status = bare.status;
  out.www_authenticate = bare.headers.get('www-authenticate');
  const challenge = extractWWWAuthenticateParams(bare);
  out.resource_metadata_url = challenge.resourceMetadataUrl?.href ?? null;
  out.challenge_scope = challenge.scope ?? null;
  out.challenge_error = challenge.error ?? null;

  // b. Discovery, by the SDK: protected resource metadata (at the challenge's
  // URL if it named one, else at the SDK's well-known guesses), then the
  // first authorization server's metadata.
  step = 'discovery';
  out.prm = await discoverOAuthProtectedResourceMetadata(serverUrl, {
    resourceMetadataUrl: challenge.resourceMetadataUrl,
  });
  const authorizationServer = out.prm.authorization_servers?.[0];
  if (!authorizationServer) throw new Error('protected resource metadata names no authorization server');
  const asMetadata = await discoverAuthorizationServerMetadata(authorizationServer);
  if (!asMetadata) throw new Error(`no authorization server metadata found for ${authorizationServer}`);
  out.as_issuer = asMetadata.issuer;
  out.as_token_endpoint = asMetadata.token_endpoint;

  // c. The SDK's client-credentials provider; the transport does the rest.
  // The credentials are bound to the authorization server found above (the
  // SDK refuses to send them to any other one).
  step = 'authorized';
  const authProvider = new ClientCredentialsProvider({
    clientId,
    clientSecret,
    expectedIssuer: authorizationServer,
    ...(scope ? { scope } : {}),
  });
  const authorized = new Client({ name: 'tollgate-it-client', version: '1.0.0' });
  await authorized.connect(
    new StreamableHTTPClientTransport(new URL(serverUrl), { authProvider, fetch: recordingFetch }),
  );
  out.tools = (await authorized.listTools()).tools.map((tool) => tool.name);
  const result = await authorized.callTool({ name: 'whoami', arguments: {} });
  out.whoami = JSON.parse(result.content[0].text);
  await authorized.close();

  // d. No auth provider at all: connecting must fail.
  step = 'unauthenticated';
  const anonymous = new Client({ name: 'tollgate-it-anonymous', version: '1.0.0' });
  let failure = null;
  try {
    await anonymous.connect(new StreamableHTTPClientTransport(new URL(serverUrl)));
  } catch (err) {
    failure = err;
  }
  if (!failure) {
    await anonymous.close();
    throw new Error('connecting without a token succeeded');
  }
  out.unauthenticated_error = `${failure.constructor.name}: ${failure.message}`;
  out.unauthenticated_error_code = failure.code ?? null;
  finish();
} catch (err) {
  finish(err);
}
