/*
 * test_route.c: upstream URLs and request targets (route.c).
 */
#include <string.h>

#include <criterion/criterion.h>

#include "route.h"

struct url_case {
	const char *url;
	int ok;
	int tls;
	const char *host;
	int port;
	const char *host_header;
	const char *base;
};

Test(route, parse_urls)
{
	static const struct url_case cases[] = {
		{ "https://services.leadconnectorhq.com", 1, 1, "services.leadconnectorhq.com", 443,
		  "services.leadconnectorhq.com", "" },
		{ "https://rest.gohighlevel.com/", 1, 1, "rest.gohighlevel.com", 443,
		  "rest.gohighlevel.com", "" },
		{ "http://localhost:8443", 1, 0, "localhost", 8443, "localhost:8443", "" },
		{ "HTTPS://Example.com:443/base/path/", 1, 1, "Example.com", 443, "Example.com",
		  "/base/path" },
		{ "http://127.0.0.1:80", 1, 0, "127.0.0.1", 80, "127.0.0.1", "" },
		{ "https://[::1]:9443", 1, 1, "::1", 9443, "[::1]:9443", "" },
		{ "ftp://x", 0 },
		{ "https://", 0 },
		{ "https://user:pass@host", 0 },
		{ "https://host:0", 0 },
		{ "https://host:65536", 0 },
		{ "https://host:12ab", 0 },
		{ "https://host/?q=1", 0 },
		{ "https://host#frag", 0 },
		{ "https://[::1", 0 },
		{ "services.leadconnectorhq.com", 0 },
		/* found by fuzz_classify: accepted hosts whose Host header did not name them */
		{ "https://[[]/", 0 },
		{ "https://[a[b]:443", 0 },
		{ "https://a]b/", 0 },
		{ "https://[example.com]/", 0 },
		{ "https://[::ffff:10.0.0.1]", 1, 1, "::ffff:10.0.0.1", 443, "[::ffff:10.0.0.1]",
		  "" },
		{ "https://host:+443", 0 },
		{ "https://host: 443", 0 },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
		struct route_url u;
		char err[128] = "";
		int rc = route_parse_url(cases[i].url, &u, err, sizeof(err));
		if (!cases[i].ok) {
			cr_expect_eq(rc, -1, "%s should fail", cases[i].url);
			cr_expect(err[0], "%s: no message", cases[i].url);
			continue;
		}
		cr_assert_eq(rc, 0, "%s: %s", cases[i].url, err);
		cr_expect_eq(u.tls, cases[i].tls, "%s", cases[i].url);
		cr_expect_str_eq(u.host, cases[i].host, "%s", cases[i].url);
		cr_expect_eq(u.port, cases[i].port, "%s", cases[i].url);
		cr_expect_str_eq(u.host_header, cases[i].host_header, "%s", cases[i].url);
		cr_expect_str_eq(u.base_path, cases[i].base, "%s", cases[i].url);
		/* what the proxy sends as Host names the upstream it parsed */
		cr_expect(route_authority_is(&u, u.host_header, strlen(u.host_header)), "%s",
		          cases[i].url);
	}
}

Test(route, v1_paths)
{
	cr_expect(route_is_v1("/v1/contacts/"));
	cr_expect(route_is_v1("/v1"));
	cr_expect(route_is_v1("/v1?x=1"));
	cr_expect(!route_is_v1("/v1x/contacts"));
	cr_expect(!route_is_v1("/v2/x"));
	cr_expect(!route_is_v1("/contacts/v1/"));
	cr_expect(!route_is_v1("/V1/contacts"));
}

Test(route, split_targets)
{
	const char *auth, *path;
	size_t alen;

	cr_expect_eq(route_split_target("/a?b", &auth, &alen, &path), ROUTE_ORIGIN);
	cr_expect_str_eq(path, "/a?b");
	cr_expect_eq(route_split_target("//evil/a", &auth, &alen, &path), ROUTE_ORIGIN);
	cr_expect_eq(route_split_target("https://h:1/p?q", &auth, &alen, &path), ROUTE_ABSOLUTE);
	cr_expect_eq(alen, 3);
	cr_expect(strncmp(auth, "h:1", alen) == 0);
	cr_expect_str_eq(path, "/p?q");
	cr_expect_eq(route_split_target("http://h", &auth, &alen, &path), ROUTE_ABSOLUTE);
	cr_expect_str_eq(path, "");
	cr_expect_eq(route_split_target("http://h?q", &auth, &alen, &path), ROUTE_ABSOLUTE);
	cr_expect_str_eq(path, "?q");
	cr_expect_eq(route_split_target("http://u@h/", &auth, &alen, &path), ROUTE_BAD);
	cr_expect_eq(route_split_target("http:///p", &auth, &alen, &path), ROUTE_BAD);
	cr_expect_eq(route_split_target("*", &auth, &alen, &path), ROUTE_BAD);
	cr_expect_eq(route_split_target("h:443", &auth, &alen, &path), ROUTE_BAD);
}

Test(route, authority_matches_only_the_upstream)
{
	struct route_url u;
	char err[64];

	cr_assert_eq(route_parse_url("https://Services.LeadConnectorHQ.com", &u, err, sizeof(err)),
	             0);
	cr_expect(route_authority_is(&u, "services.leadconnectorhq.com", 28));
	cr_expect(route_authority_is(&u, "services.leadconnectorhq.com:443", 32));
	cr_expect(!route_authority_is(&u, "services.leadconnectorhq.com:80", 31));
	cr_expect(!route_authority_is(&u, "services.leadconnectorhq.com.evil.com", 37));
	cr_expect(!route_authority_is(&u, "evil.com", 8));
	cr_expect(!route_authority_is(&u, "services.leadconnectorhq.com:", 29));
	cr_expect(!route_authority_is(&u, "services.leadconnectorhq.com:4x3", 32));
	cr_expect(!route_authority_is(&u, "", 0));

	cr_assert_eq(route_parse_url("http://[::1]:8080", &u, err, sizeof(err)), 0);
	cr_expect(route_authority_is(&u, "[::1]:8080", 10));
	cr_expect(!route_authority_is(&u, "[::1]", 5));
	cr_expect(!route_authority_is(&u, "[::2]:8080", 10));
}

Test(route, path_len)
{
	cr_expect_eq(route_path_len("/a/b?c=d"), 4);
	cr_expect_eq(route_path_len("/a/b"), 4);
	cr_expect_eq(route_path_len("?x"), 0);
}
