// sdk.mjs: drives the official HighLevel Node SDK (@gohighlevel/api-client, pinned in
// package.json) through ghlproxy against the mock upstream. Run by
// tests/integration/test_node_sdk.c, which starts the mock and the proxy, seeds the tokens and
// then checks what the mock recorded; this script checks what the SDK got back.
//
// In: environment only.
//   GHL_SDK_DIR       where package.json was installed (`npm ci`), so node_modules is there
//   GHL_PROXY_URL     http://127.0.0.1:PORT, the proxy
//   GHL_MODE          passthrough | inject | ratelimit
//   GHL_LOCATION      the location every call is for
//   passthrough: GHL_PIT, GHL_CLIENT_ID, GHL_CLIENT_SECRET, GHL_REFRESH_TOKEN (seeded at the
//                mock; the SDK spends it and every one after it)
//   inject:      GHL_DUMMY_TOKEN (what the SDK is constructed with; must never reach upstream)
//   ratelimit:   GHL_PIT (passthrough, the proxy configured with burst 3 per 1 s, daily 4 and
//                no waiting)
// Out: one line per step on stderr ("ok ..." / "FAIL ..."), never a token or secret (every line
// is scrubbed of the secrets the script knows and of anything shaped like a JWT or a PIT);
// exit status 0 when every check passed, 1 otherwise, 2 on a setup error.
//
// The mock answers ordinary calls with an echo of what it received (method, uri, headers,
// body_len, body_sha256), so the SDK's own return value tells what went through the proxy.
import { createRequire } from 'node:module';
import { createHash } from 'node:crypto';
import path from 'node:path';
import util from 'node:util';

const env = process.env;
const secrets = new Set();
let failures = 0;

function remember(s) {
	if (typeof s === 'string' && s.length >= 8) secrets.add(s);
}

function scrub(text) {
	let out = String(text);
	for (const s of secrets) out = out.split(s).join('[secret]');
	return out
		.replace(/eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.?[A-Za-z0-9_-]*/g, '[jwt]')
		.replace(/pit-[0-9a-fA-F-]{8,}/g, '[pit]');
}

function say(line) {
	process.stderr.write(scrub(line) + '\n');
}

// The SDK logs through console.*: scrub those too.
for (const name of ['log', 'info', 'warn', 'error', 'debug']) {
	console[name] = (...args) => say(`[console.${name}] ` + util.format(...args));
}

function check(cond, what) {
	if (cond) {
		say(`ok   ${what}`);
	} else {
		failures++;
		say(`FAIL ${what}`);
	}
	return cond;
}

function need(name) {
	const v = env[name];
	if (!v) {
		say(`setup: ${name} is not set`);
		process.exit(2);
	}
	return v;
}

function sha256(text) {
	return createHash('sha256').update(text, 'utf8').digest('hex');
}

// A header of the mock's echo ([[name, value], ...]), case-insensitively.
function echoHeader(echo, name) {
	const h = (echo?.headers || []).find((kv) => kv[0].toLowerCase() === name.toLowerCase());
	return h ? h[1] : undefined;
}

// exp of a JWT (fractional seconds, as HighLevel writes it), in ms; NaN if unreadable.
function jwtExpMs(token) {
	try {
		const payload = token.split('.')[1];
		return JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')).exp * 1000;
	} catch {
		return NaN;
	}
}

// What an SDK error says, without its request (the SDK redacts it, but we print nothing of it).
function describe(err) {
	if (err && err.name === 'GHLError') {
		const msg = typeof err.message === 'string' ? err.message : '';
		return `GHLError ${err.statusCode ?? '-'} ${err.code ?? ''}: ${msg}`;
	}
	return `${err?.name || 'Error'}: ${err?.message || err}`;
}

// One SDK call: its result, or null after a FAIL line.
async function call(what, fn) {
	try {
		return await fn();
	} catch (err) {
		check(false, `${what}: ${describe(err)}`);
		return null;
	}
}

const sdkDir = need('GHL_SDK_DIR');
const proxyUrl = need('GHL_PROXY_URL');
const mode = need('GHL_MODE');
const loc = need('GHL_LOCATION');
const require = createRequire(path.join(sdkDir, 'package.json'));
const { HighLevel } = require('@gohighlevel/api-client');
const sdkVersion = require('@gohighlevel/api-client/package.json').version;
say(`sdk @gohighlevel/api-client ${sdkVersion}, mode ${mode}`);

// Checks common to every echo: the call arrived as the SDK made it.
function checkEcho(echo, what, method, uri, auth) {
	if (!check(echo && typeof echo === 'object' && echo.method, `${what}: an echo came back`))
		return;
	check(echo.method === method, `${what}: method ${method} (got ${echo.method})`);
	check(echo.uri === uri, `${what}: uri ${uri} (got ${echo.uri})`);
	check(echoHeader(echo, 'Version') === '2023-02-21', `${what}: Version 2023-02-21`);
	check(echoHeader(echo, 'x-sdk-version') === sdkVersion, `${what}: x-sdk-version ${sdkVersion}`);
	if (auth !== undefined)
		check(echoHeader(echo, 'Authorization') === auth, `${what}: the expected Authorization`);
}

function checkBody(echo, what, body) {
	const text = JSON.stringify(body);
	check(echo?.body_len === Buffer.byteLength(text, 'utf8') && echo?.body_sha256 === sha256(text),
		`${what}: the JSON body arrived intact (${Buffer.byteLength(text, 'utf8')} bytes)`);
	check(/^application\/json/.test(echoHeader(echo, 'Content-Type') || ''),
		`${what}: Content-Type application/json`);
}

// The contact calls both modes make. `auth` is the Authorization upstream must have seen (a
// function of the echo in inject mode), `hint` the headers an id-less route needs (inject).
async function contactCalls(ghl, tag, auth, hint) {
	let what;
	// The SDK orders query parameters as its spec lists them, not as given.
	const q = `locationId=${loc}&query=ada+lovelace&limit=5`;
	let echo = await call(`${tag} getContacts`, () =>
		ghl.contacts.getContacts({ locationId: loc, limit: 5, query: 'ada lovelace' }));
	what = `${tag} getContacts`;
	checkEcho(echo, what, 'GET', `/contacts/?${q}`, auth(echo, what));

	const search = {
		locationId: loc,
		page: 1,
		pageLimit: 20,
		filters: [{ field: 'firstNameLowerCase', operator: 'eq', value: 'ada' }],
	};
	echo = await call(`${tag} searchContactsAdvanced`, () =>
		ghl.contacts.searchContactsAdvanced(search));
	what = `${tag} searchContactsAdvanced`;
	checkEcho(echo, what, 'POST', '/contacts/search', auth(echo, what));
	checkBody(echo, `${tag} searchContactsAdvanced`, search);

	const contact = {
		locationId: loc,
		firstName: 'Ada',
		lastName: 'Lovelace',
		email: 'ada@example.com',
		tags: ['sdk', 'ünïcødé ✓'],
	};
	echo = await call(`${tag} createContact`, () => ghl.contacts.createContact(contact));
	what = `${tag} createContact`;
	checkEcho(echo, what, 'POST', '/contacts/', auth(echo, what));
	checkBody(echo, `${tag} createContact`, contact);

	const opts = hint ? { headers: hint } : undefined;
	echo = await call(`${tag} getContact`, () =>
		ghl.contacts.getContact({ contactId: 'ct0000000001' }, opts));
	what = `${tag} getContact`;
	checkEcho(echo, what, 'GET', '/contacts/ct0000000001', auth(echo, what));

	const update = { firstName: 'Grace', customFields: [{ id: 'f1', value: 'x'.repeat(3000) }] };
	echo = await call(`${tag} updateContact`, () =>
		ghl.contacts.updateContact({ contactId: 'ct0000000001' }, update, opts));
	what = `${tag} updateContact`;
	checkEcho(echo, what, 'PUT', '/contacts/ct0000000001', auth(echo, what));
	checkBody(echo, `${tag} updateContact`, update);

	echo = await call(`${tag} deleteContact`, () =>
		ghl.contacts.deleteContact({ contactId: 'ct0000000001' }, opts));
	what = `${tag} deleteContact`;
	checkEcho(echo, what, 'DELETE', '/contacts/ct0000000001', auth(echo, what));
}

// Passthrough, part 1: a Private Integration Token, pointed at the proxy both documented ways.
async function pitCalls() {
	const pit = need('GHL_PIT');
	remember(pit);
	HighLevel.BASE_URL = proxyUrl;
	const ghl = new HighLevel({ privateIntegrationToken: pit, logLevel: 'none' });
	check(ghl.getHttpClient().defaults.baseURL === proxyUrl, 'HighLevel.BASE_URL took effect');
	await contactCalls(ghl, 'pit', () => `Bearer ${pit}`);

	// After construction. A base URL that did not take would hit a closed loopback port.
	HighLevel.BASE_URL = 'http://127.0.0.1:9';
	const late = new HighLevel({ privateIntegrationToken: pit, logLevel: 'none' });
	late.getHttpClient().defaults.baseURL = proxyUrl;
	HighLevel.BASE_URL = proxyUrl;
	const echo = await call('pit(baseURL after) getContacts', () =>
		late.contacts.getContacts({ locationId: loc }));
	checkEcho(echo, 'pit(baseURL after) getContacts', 'GET', `/contacts/?locationId=${loc}`,
		`Bearer ${pit}`);
}

// Passthrough, part 2: OAuth tokens held by the SDK, refreshed by the SDK through the proxy.
async function oauthCalls() {
	const clientId = need('GHL_CLIENT_ID');
	const clientSecret = need('GHL_CLIENT_SECRET');
	const seeded = need('GHL_REFRESH_TOKEN');
	remember(clientSecret);
	remember(seeded);
	HighLevel.BASE_URL = proxyUrl;
	const ghl = new HighLevel({ clientId, clientSecret, logLevel: 'none' });
	const storage = ghl.getSessionStorage();

	// Count the SDK's token calls and its retries after a 401 as they leave (the SDK marks a
	// request it sends again after a 401 with __isRetryRequest). No token is looked at.
	let tokenCalls = 0;
	let retries = 0;
	ghl.getHttpClient().interceptors.request.use((config) => {
		if (config.url === '/oauth/token') tokenCalls++;
		if (config.__isRetryRequest) retries++;
		return config;
	});

	// The install's first pair, through the SDK's own refresh call.
	const first = await call('oauth.refreshToken (first pair)', () =>
		ghl.oauth.refreshToken(seeded, clientId, clientSecret, 'refresh_token', 'Location'));
	if (!first) return;
	remember(first.access_token);
	remember(first.refresh_token);
	check(typeof first.access_token === 'string' && typeof first.refresh_token === 'string' &&
		first.refresh_token !== seeded, 'oauth.refreshToken: a new access and refresh token');
	check(first.locationId === loc && first.userType === 'Location',
		'oauth.refreshToken: the answer names the location');

	// The app stored the pair believing it lives a day (HighLevel's usual expires_in), so the
	// SDK will not refresh ahead: it learns of the expiry from a 401, as after a clock skew or
	// an early expiry upstream.
	await storage.setSession(loc, { ...first, expires_in: 86399 });
	const expMs = jwtExpMs(first.access_token);
	if (!check(Number.isFinite(expMs), 'the access token carries its exp')) return;
	// The mock refuses it from exp on: wait for that moment (a deadline, not a guess).
	const waitMs = Math.max(0, Math.ceil(expMs - Date.now()) + 50);
	check(waitMs < 20000, `the access token expires in ${waitMs} ms`);
	await new Promise((resolve) => setTimeout(resolve, waitMs));

	// 401 from HighLevel through the proxy -> the SDK refreshes through the proxy -> retries.
	let before = tokenCalls;
	let echo = await call('oauth getContacts (expired token)', () =>
		ghl.contacts.getContacts({ locationId: loc, limit: 1 }));
	let session = await storage.getSession(loc);
	remember(session?.access_token);
	remember(session?.refresh_token);
	check(retries === 1, `the SDK got a 401 and sent the call again (${retries} retries)`);
	check(tokenCalls - before === 1, 'the 401 made the SDK refresh once (POST /oauth/token)');
	check(session && session.access_token !== first.access_token &&
		session.refresh_token !== first.refresh_token, 'the SDK stored a new pair');
	checkEcho(echo, 'oauth getContacts (retried)', 'GET', `/contacts/?locationId=${loc}&limit=1`,
		`Bearer ${session?.access_token}`);

	// The new token lives a couple of seconds (the mock's TTL), within the SDK's 30 s margin:
	// the next call refreshes ahead, through the proxy, and goes out with the newest token.
	before = tokenCalls;
	const prev = session;
	const search = { locationId: loc, pageLimit: 1 };
	echo = await call('oauth searchContactsAdvanced (refresh ahead)', () =>
		ghl.contacts.searchContactsAdvanced(search));
	session = await storage.getSession(loc);
	remember(session?.access_token);
	remember(session?.refresh_token);
	check(tokenCalls - before === 1, 'the SDK refreshed ahead of expiry once');
	check(retries === 1, 'no 401 this time');
	check(session && session.refresh_token !== prev?.refresh_token,
		'the SDK stored the rotated refresh token');
	checkEcho(echo, 'oauth searchContactsAdvanced', 'POST', '/contacts/search',
		`Bearer ${session?.access_token}`);
	checkBody(echo, 'oauth searchContactsAdvanced', search);
	say(`oauth token calls: ${tokenCalls}`);
}

// Inject: the SDK holds no HighLevel secret. It refuses to build without one credential, and
// its API methods refuse to send without a token, so it gets a placeholder the proxy drops.
async function injectCalls() {
	const dummy = need('GHL_DUMMY_TOKEN');
	HighLevel.BASE_URL = proxyUrl;
	const ghl = new HighLevel({ privateIntegrationToken: dummy, logLevel: 'none' });
	const injected = (echo, what) => {
		const a = echoHeader(echo, 'Authorization');
		remember(a?.slice(7));
		check(typeof a === 'string' && a.startsWith('Bearer eyJ') && !a.includes(dummy),
			`${what}: the proxy injected its OAuth token in place of the placeholder`);
		return a;
	};
	await contactCalls(ghl, 'inject', injected, { 'x-location-id': loc });

	// An id-less route without a hint: the proxy cannot pick a credential and says so; the
	// SDK surfaces its 401 (it has nothing to refresh).
	try {
		await ghl.contacts.getContact({ contactId: 'ct0000000002' });
		check(false, 'inject getContact without a hint: refused');
	} catch (err) {
		check(err?.statusCode === 401 && /x-location-id/.test(String(err.message)),
			`inject getContact without a hint: the proxy's clear 401 (${describe(err)})`);
	}
}

// Passthrough with tight limits (burst 3 per 1 s, daily 4, no waiting): the proxy's own 429s,
// as the SDK reads them, and the SDK's opt-in retry on them.
async function rateLimitCalls() {
	const pit = need('GHL_PIT');
	remember(pit);
	HighLevel.BASE_URL = proxyUrl;
	const plain = new HighLevel({ privateIntegrationToken: pit, logLevel: 'none' });
	const get = (ghl) => ghl.contacts.getContacts({ locationId: loc });
	for (let i = 1; i <= 3; i++) {
		const echo = await call(`ratelimit call ${i}`, () => get(plain));
		check(echo?.method === 'GET', `ratelimit call ${i}: within the burst, answered`);
	}
	// The burst is spent and no wait is allowed: the proxy answers 429 at once.
	try {
		await get(plain);
		check(false, 'ratelimit call 4: refused');
	} catch (err) {
		const rl = err?.rateLimit;
		check(err?.statusCode === 429 && err?.code === 'RATE_LIMIT',
			`ratelimit call 4: a GHLRateLimitError (${describe(err)})`);
		check(rl?.scope === 'burst', `ratelimit call 4: the SDK reads a burst limit (${rl?.scope})`);
		check(rl?.max === 3 && rl?.remaining === 0 && rl?.intervalMs === 1000 &&
			rl?.dailyRemaining === 1,
			`ratelimit call 4: the proxy's X-RateLimit-* as the SDK parsed them ${JSON.stringify(rl)}`);
	}
	// The SDK's opt-in retry: it waits the interval the headers give and gets through.
	const retrying = new HighLevel({
		privateIntegrationToken: pit,
		logLevel: 'none',
		rateLimitRetry: { maxRetries: 4 },
	});
	let sends = 0;
	retrying.getHttpClient().interceptors.request.use((config) => {
		sends++;
		return config;
	});
	const echo = await call('ratelimit call 5 (SDK retry)', () => get(retrying));
	check(echo?.method === 'GET' && sends >= 2,
		`ratelimit call 5: the SDK retried the burst 429 and got through (${sends} sends)`);
	// The daily budget (4) is spent: a daily 429, which the SDK does not retry.
	sends = 0;
	try {
		await get(retrying);
		check(false, 'ratelimit call 6: refused');
	} catch (err) {
		const rl = err?.rateLimit;
		check(err?.statusCode === 429 && rl?.scope === 'daily' && rl?.dailyRemaining === 0,
			`ratelimit call 6: the SDK reads a daily limit (${rl?.scope}, ${describe(err)})`);
		check(rl?.dailyResetMs > 0, `ratelimit call 6: with the daily reset (${rl?.dailyResetMs} ms)`);
		check(sends === 1, `ratelimit call 6: not retried (${sends} sends)`);
	}
}

try {
	if (mode === 'passthrough') {
		await pitCalls();
		await oauthCalls();
	} else if (mode === 'inject') {
		await injectCalls();
	} else if (mode === 'ratelimit') {
		await rateLimitCalls();
	} else {
		say(`setup: unknown GHL_MODE ${mode}`);
		process.exit(2);
	}
} catch (err) {
	check(false, `unexpected: ${describe(err)}`);
}
say(failures === 0 ? 'all checks passed' : `${failures} check(s) failed`);
process.exit(failures === 0 ? 0 : 1);
