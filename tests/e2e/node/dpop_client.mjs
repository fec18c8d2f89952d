// A public client using oauth4webapi's DPoP (RFC 9449): code flow bound with dpop_jkt,
// token, userinfo and refresh, each retried once on use_dpop_nonce as the library's
// documentation shows. Prints the authorization URL, reads the callback URL from stdin,
// then prints what it got as one JSON line.
import * as oauth from 'oauth4webapi'
import { createInterface } from 'node:readline'

const [issuerUrl, clientId, redirectUri] = process.argv.slice(2)
const insecure = { [oauth.allowInsecureRequests]: true }
const issuer = new URL(issuerUrl)
const as = await oauth.processDiscoveryResponse(
  issuer,
  await oauth.discoveryRequest(issuer, { ...insecure, algorithm: 'oidc' }),
)
const client = { client_id: clientId }
const clientAuth = oauth.None()
const keyPair = await oauth.generateKeyPair('ES256')
const DPoP = oauth.DPoP(client, keyPair)
const options = { ...insecure, DPoP }
let nonceRetries = 0

async function withNonce(send, read) {
  try {
    return await read(await send())
  } catch (err) {
    if (!oauth.isDPoPNonceError(err)) throw err
    nonceRetries += 1
    return await read(await send())
  }
}

async function thumbprint(publicKey) {
  const { crv, kty, x, y } = await crypto.subtle.exportKey('jwk', publicKey)
  const canonical = JSON.stringify({ crv, kty, x, y })
  const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(canonical))
  return Buffer.from(digest).toString('base64url')
}

const verifier = oauth.generateRandomCodeVerifier()
const url = new URL(as.authorization_endpoint)
url.searchParams.set('client_id', clientId)
url.searchParams.set('redirect_uri', redirectUri)
url.searchParams.set('response_type', 'code')
url.searchParams.set('scope', 'openid offline_access')
url.searchParams.set('code_challenge', await oauth.calculatePKCECodeChallenge(verifier))
url.searchParams.set('code_challenge_method', 'S256')
url.searchParams.set('dpop_jkt', await thumbprint(keyPair.publicKey))
console.log(url.href)

const lines = createInterface({ input: process.stdin })
const callback = await new Promise((resolve) => lines.once('line', resolve))
lines.close()

const params = oauth.validateAuthResponse(as, client, new URL(callback), oauth.expectNoState)
const tokens = await withNonce(
  () => oauth.authorizationCodeGrantRequest(
    as, client, clientAuth, params, redirectUri, verifier, options),
  (response) => oauth.processAuthorizationCodeResponse(as, client, response),
)
const { sub } = oauth.getValidatedIdTokenClaims(tokens)
const userinfo = await withNonce(
  () => oauth.userInfoRequest(as, client, tokens.access_token, options),
  (response) => oauth.processUserInfoResponse(as, client, sub, response),
)
const refreshed = await withNonce(
  () => oauth.refreshTokenGrantRequest(as, client, clientAuth, tokens.refresh_token, options),
  (response) => oauth.processRefreshTokenResponse(as, client, response),
)
console.log(JSON.stringify({
  token_type: tokens.token_type,
  access_token: tokens.access_token,
  refresh_token: refreshed.refresh_token ?? tokens.refresh_token,
  userinfo,
  refreshed_token_type: refreshed.token_type,
  refreshed_access_token: refreshed.access_token,
  jkt: await thumbprint(keyPair.publicKey),
  nonce_retries: nonceRetries,
}))
