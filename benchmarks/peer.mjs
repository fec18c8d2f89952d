// The peer for benchmarks/run.py: panva's node-oidc-provider configured like authserver.
//
// run.py copies this file into a throw-away folder where `oidc-provider` is installed from
// npm, and starts it with: PEER_PORT, PEER_CLIENT_ID, PEER_CLIENT_SECRET, PEER_CALLBACK,
// PEER_RESOURCE and PEER_AT_ALG (RS256 or ES256) in the environment.
//
// The same shape as ours: one confidential client (client_secret_basic) with
// client_credentials, authorization_code (PKCE S256 required) and refresh_token; JWT access
// tokens signed with PEER_AT_ALG for the resource PEER_RESOURCE; introspection and
// revocation on; rotated refresh tokens; no devInteractions. Its sign-in and consent pages
// are the tiny handler below, which signs the one bench account in and grants what is asked
// (the peer leaves those pages to the application), so a browser session with remembered
// consent goes straight from /auth to the redirect URI, as ours does.
//
// Storage is the provider's default in-memory adapter: the peer writes nothing to disk.
// node-oidc-provider refuses to introspect its JWT access tokens ("Structured JWT Tokens
// cannot be introspected"), so W2 introspects its opaque access token, which a
// client_credentials request without `resource` gets.

import { generateKeyPairSync } from 'node:crypto';

import Provider from 'oidc-provider';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};

const port = Number(env('PEER_PORT'));
const clientId = env('PEER_CLIENT_ID');
const resource = env('PEER_RESOURCE');
const accessTokenAlg = env('PEER_AT_ALG');
const apiScope = 'api:read';

function signingKey(type, options, alg) {
  const jwk = generateKeyPairSync(type, options).privateKey.export({ format: 'jwk' });
  return { ...jwk, alg, use: 'sig', kid: alg.toLowerCase() };
}

const configuration = {
  clients: [{
    client_id: clientId,
    client_secret: env('PEER_CLIENT_SECRET'),
    grant_types: ['client_credentials', 'authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: [env('PEER_CALLBACK')],
    token_endpoint_auth_method: 'client_secret_basic',
    scope: `openid offline_access ${apiScope}`,
  }],
  jwks: {
    keys: [
      signingKey('rsa', { modulusLength: 2048 }, 'RS256'),
      signingKey('ec', { namedCurve: 'P-256' }, 'ES256'),
    ],
  },
  cookies: { keys: ['benchmark-cookie-key-not-a-secret-0123456789'] },
  scopes: ['openid', 'offline_access', apiScope],
  pkce: { required: () => true },
  rotateRefreshToken: true,
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  findAccount: async (ctx, sub) => ({ accountId: sub, claims: async () => ({ sub }) }),
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  ttl: { AccessToken: 600, ClientCredentials: 600, AuthorizationCode: 60, RefreshToken: 2592000 },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => undefined,
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: apiScope,
        audience: resource,
        accessTokenTTL: 600,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: accessTokenAlg } },
      }),
    },
  },
};

const provider = new Provider(`http://127.0.0.1:${port}`, configuration);

provider.use(async (ctx, next) => {
  if (!ctx.path.startsWith('/interaction/')) {
    await next();
    return;
  }
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  let result;
  if (details.prompt.name === 'login') {
    result = { login: { accountId: 'bench-user' } };
  } else {
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
    const { missingOIDCScope, missingResourceScopes } = details.prompt.details;
    if (missingOIDCScope) grant.addOIDCScope(missingOIDCScope.join(' '));
    for (const [indicator, scopes] of Object.entries(missingResourceScopes || {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    result = { consent: { grantId: await grant.save() } };
  }
  ctx.respond = false;
  await provider.interactionFinished(ctx.req, ctx.res, result, { mergeWithLastSubmission: false });
});

provider.listen(port, '127.0.0.1', () => {
  console.log(`peer listening on ${port}`);
});
