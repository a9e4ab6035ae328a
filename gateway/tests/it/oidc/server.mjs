// Real OpenID authorization server (panva's oidc-provider) for tollgate's
// integration tests. Usage: `node server.mjs PORT [RESOURCE ...]`; listens on
// 127.0.0.1:PORT only, issuer `http://127.0.0.1:PORT`, prints `ready <issuer>`
// once listening, exits 0 on SIGTERM/SIGINT. All state is in memory.
//
// One confidential client (tollgate-test / tollgate-test-secret, basic auth)
// may use client_credentials and introspect:
//   - with    resource=https://api.example -> ES256 JWT access token
//     (typ at+jwt, aud https://api.example), verifiable via jwks_uri;
//   - without resource                     -> opaque token, introspectable.
// Each extra RESOURCE argument (e.g. http://127.0.0.1:GW/mcp) is a resource
// server just like https://api.example: JWT access tokens with aud RESOURCE.
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import Provider, { errors } from 'oidc-provider';

const port = Number.parseInt(process.argv[2], 10);
if (!(port > 0 && port < 65536)) {
  console.error('usage: node server.mjs PORT [RESOURCE ...]');
  process.exit(2);
}
const issuer = `http://127.0.0.1:${port}`;
const RESOURCE = 'https://api.example';
const RESOURCES = [RESOURCE, ...process.argv.slice(3)];

// Fresh EC P-256 signing key per run; tests fetch it from jwks_uri.
const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const signingJwk = { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), alg: 'ES256', use: 'sig' };

const provider = new Provider(issuer, {
  clients: [{
    client_id: 'tollgate-test',
    client_secret: 'tollgate-test-secret',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_basic',
    scope: 'read write',
  }],
  // Only an EC key exists: the client's id_token alg default (RS256) would
  // fail client validation on first use, so default it to ES256.
  clientDefaults: { id_token_signed_response_alg: 'ES256' },
  jwks: { keys: [signingJwk] },
  scopes: ['read', 'write'],
  // ttl and introspection.allowedPolicy are set explicitly (same effect as
  // the defaults here) so the provider prints no NOTICE lines on stdout.
  ttl: { ClientCredentials: (ctx, token) => token.resourceServer?.accessTokenTTL || 600 },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true, allowedPolicy: () => true },
    resourceIndicators: {
      enabled: true,
      // No resource parameter -> no resource server -> default (opaque) format.
      defaultResource: () => undefined,
      getResourceServerInfo: (ctx, resourceIndicator) => {
        if (!RESOURCES.includes(resourceIndicator)) throw new errors.InvalidTarget();
        return {
          audience: resourceIndicator,
          scope: 'read write',
          accessTokenTTL: 3600,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'ES256' } },
        };
      },
    },
  },
  // client_credentials tokens have no end-user; expose sub = client_id
  // (as the JWT format already does) so introspection answers carry `sub`.
  extraTokenClaims: (ctx, token) => (
    token.kind === 'ClientCredentials' ? { sub: token.clientId } : undefined
  ),
});

const server = createServer(provider.callback());
server.listen(port, '127.0.0.1', () => {
  console.log(`ready ${issuer}`);
});

function shutdown() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
