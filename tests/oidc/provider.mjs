// Test fixture: a real OpenID Connect provider (npm's oidc-provider) for the appliance's
// single sign-on and SMART App Launch tests, plus the small FHIR API of a pretend EHR.
//
//   node provider.mjs CONFIG.json
//
// CONFIG.json: {"port", "issuer", "clients": [oidc-provider client metadata],
//   "accounts": {login: {"password", "claims": {...},
//                "tamper": null|"expired"|"wrong_iss"|"nonce"|"foreign_key"}},
//   "launches": {launch id: patient id}, "patients": {patient id: FHIR Patient}}
//
// A client registered with client_secret_post must not send its secret in a header.
// Interactions are one login form (no separate consent: every requested scope is
// granted). PKCE is required for every client. The SMART parts: the scopes `launch`,
// `launch/patient`, `fhirUser`, `patient/*.read`; the `launch` parameter is accepted at
// the authorization endpoint, must name a known launch, and its patient is bound to the
// grant and returned as `patient` in the token response; `/fhir/.well-known/smart-
// configuration` and `/fhir/Patient/{id}` (bearer access token with a patient scope).
// An account with "tamper" gets its ID token re-signed with the provider's own key after
// one change (expired, another issuer, another nonce): only the client's check of that
// one claim can refuse it; "foreign_key" signs it with a key not in the JWKS (same kid).
// Prints "listening <issuer>" on stdout when ready.

import { readFileSync } from 'node:fs';
import { exportJWK, generateKeyPair, importJWK, decodeJwt, SignJWT } from 'jose';
import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const { issuer, port } = config;
const accounts = config.accounts ?? {};
const launches = config.launches ?? {};
const patients = config.patients ?? {};
const patientOfGrant = new Map();

const { privateKey } = await generateKeyPair('RS256', { extractable: true });
const jwk = { ...(await exportJWK(privateKey)), kid: 'fixture-1', alg: 'RS256', use: 'sig' };
const signingKey = await importJWK(jwk, 'RS256');
const { privateKey: foreignKey } = await generateKeyPair('RS256'); // not in the JWKS

const SMART_SCOPES = ['launch', 'launch/patient', 'fhirUser', 'patient/*.read', 'patient/Patient.read'];

const provider = new Provider(issuer, {
  clients: config.clients,
  jwks: { keys: [jwk] },
  cookies: { keys: ['fixture cookie key'] },
  pkce: { required: () => true },
  scopes: ['openid', 'profile', 'email', 'groups', 'roles', ...SMART_SCOPES],
  claims: {
    openid: ['sub'],
    profile: ['preferred_username', 'name'],
    email: ['email'],
    groups: ['groups'],
    roles: ['roles'],
    fhirUser: ['fhirUser'],
  },
  conformIdTokenClaims: false, // scope claims in the ID token, as Keycloak and Entra ID do
  extraParams: {
    launch(ctx, value) {
      if (value !== undefined && !(value in launches)) {
        throw new Provider.errors.InvalidRequest('unknown launch');
      }
    },
  },
  features: { devInteractions: { enabled: false } },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  ttl: { IdToken: 300, AccessToken: 300, AuthorizationCode: 60, Interaction: 300, Session: 600, Grant: 600 },
  async findAccount(ctx, sub) {
    const account = accounts[sub];
    if (!account) return undefined;
    return { accountId: sub, claims: async () => ({ sub, ...account.claims }) };
  },
});

function page(body) {
  return `<!doctype html><html><head><title>Fixture IdP</title></head><body>${body}</body></html>`;
}

function escape(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

async function readForm(req) {
  let body = '';
  for await (const chunk of req) body += chunk;
  return Object.fromEntries(new URLSearchParams(body));
}

// The login form, and its submission: log in and grant every requested scope at once.
async function interaction(ctx, next) {
  const match = ctx.path.match(/^\/interaction\/([\w-]+)$/);
  if (!match) return next();
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  if (ctx.method === 'GET') {
    ctx.type = 'html';
    ctx.body = page(`<form method="post" action="/interaction/${escape(match[1])}">
      <input name="login" id="login"> <input name="password" id="password" type="password">
      <button type="submit" id="submit">Sign in</button></form>`);
    return undefined;
  }
  const form = await readForm(ctx.req);
  const account = accounts[form.login];
  if (!account || account.password !== form.password) {
    ctx.status = 401;
    ctx.type = 'html';
    ctx.body = page('<p id="error">Wrong login or password.</p>');
    return undefined;
  }
  const { params } = details;
  const grant = new provider.Grant({ accountId: form.login, clientId: params.client_id });
  grant.addOIDCScope(params.scope);
  const grantId = await grant.save();
  if (params.launch) patientOfGrant.set(grantId, launches[params.launch]);
  const result = { login: { accountId: form.login }, consent: { grantId } };
  return provider.interactionFinished(ctx.req, ctx.res, result, { mergeWithLastSubmission: false });
}

// The token response: the launch's patient, and a tampered ID token for "tamper" accounts.
async function tokenResponse(ctx, next) {
  await next();
  if (ctx.path !== '/token' || ctx.method !== 'POST' || ctx.status !== 200) return;
  const code = ctx.oidc?.entities?.AuthorizationCode;
  if (code && patientOfGrant.has(code.grantId)) ctx.body.patient = patientOfGrant.get(code.grantId);
  if (ctx.body.id_token) ctx.body.id_token = await tamper(ctx.body.id_token);
}

async function tamper(idToken) {
  const claims = decodeJwt(idToken);
  const mode = accounts[claims.sub]?.tamper;
  if (!mode) return idToken;
  const now = Math.floor(Date.now() / 1000);
  const changes = {
    expired: { iat: now - 3600, exp: now - 1800 },
    wrong_iss: { iss: 'http://attacker.invalid' },
    nonce: { nonce: 'not-the-nonce-the-client-sent' },
    foreign_key: {},
  }[mode];
  return new SignJWT({ ...claims, ...changes })
    .setProtectedHeader({ alg: 'RS256', kid: jwk.kid, typ: 'JWT' })
    .sign(mode === 'foreign_key' ? foreignKey : signingKey);
}

// Strict client authentication, as servers that read a confidential client's secret only
// from where it was registered (oidc-provider itself takes either): a client registered
// with client_secret_post that sends an Authorization header is refused.
const postOnly = new Set(
  config.clients.filter((c) => c.token_endpoint_auth_method === 'client_secret_post').map((c) => c.client_id),
);
async function strictClientAuth(ctx, next) {
  if (ctx.path === '/token' && ctx.method === 'POST' && ctx.get('authorization')) {
    const basic = Buffer.from(ctx.get('authorization').replace(/^basic /i, ''), 'base64').toString();
    if (postOnly.has(decodeURIComponent(basic.split(':')[0]))) {
      ctx.status = 401;
      ctx.body = { error: 'invalid_client', error_description: 'registered for client_secret_post' };
      return undefined;
    }
  }
  return next();
}

// The pretend EHR's FHIR API: SMART configuration and Patient reads.
async function fhir(ctx, next) {
  if (!ctx.path.startsWith('/fhir/')) return next();
  if (ctx.path === '/fhir/.well-known/smart-configuration') {
    ctx.body = {
      issuer,
      jwks_uri: `${issuer}/jwks`,
      authorization_endpoint: `${issuer}/auth`,
      token_endpoint: `${issuer}/token`,
      grant_types_supported: ['authorization_code'],
      code_challenge_methods_supported: ['S256'],
      scopes_supported: ['openid', 'fhirUser', ...SMART_SCOPES],
      capabilities: ['launch-ehr', 'client-public', 'client-confidential-symmetric', 'context-ehr-patient', 'sso-openid-connect'],
    };
    return undefined;
  }
  const match = ctx.path.match(/^\/fhir\/Patient\/([\w.-]+)$/);
  const [scheme, value] = (ctx.get('authorization') || ' ').split(' ');
  const token = scheme.toLowerCase() === 'bearer' ? await provider.AccessToken.find(value) : undefined;
  if (!token || !/(^| )patient\/(\*|Patient)\.read( |$)/.test(token.scope)) {
    ctx.status = 401;
    ctx.body = { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'login' }] };
    return undefined;
  }
  if (!match || !(match[1] in patients)) {
    ctx.status = 404;
    ctx.body = { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'not-found' }] };
    return undefined;
  }
  ctx.type = 'application/fhir+json';
  ctx.body = patients[match[1]];
  return undefined;
}

provider.use(strictClientAuth);
provider.use(fhir);
provider.use(interaction);
provider.use(tokenResponse);
provider.listen(port, '127.0.0.1', () => {
  process.stdout.write(`listening ${issuer}\n`);
});
