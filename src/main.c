/*
 * main.c: the command line.
 *   ghlproxy [-c FILE] [-o section.key=value]...      run
 *   ghlproxy -t [-c FILE] [-o ...]                     check the configuration and exit
 *   ghlproxy -V                                        print the version
 *   ghlproxy [-c FILE] [-o ...] token import|list|remove ...   manage OAuth tokens (token_cli.c)
 * Configuration precedence: built-in defaults < FILE < GHLPROXY_* environment < -o.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "build_config.h"
#include "config.h"
#include "daemon.h"
#include "token_cli.h"

extern char **environ;

#define DEFAULT_CONFIG GHLPROXY_SYSCONFDIR "/ghlproxy.conf"

static void usage(FILE *f)
{
	fprintf(f,
	        "Usage: ghlproxy [-c FILE] [-o section.key=value]...\n"
	        "       ghlproxy -t [-c FILE] [-o section.key=value]...\n"
	        "       ghlproxy -V\n"
	        "       ghlproxy [-c FILE] [-o section.key=value]... token import --resource ID "
	        "--user-type Location|Company\n"
	        "       ghlproxy [-c FILE] [-o section.key=value]... token list\n"
	        "       ghlproxy [-c FILE] [-o section.key=value]... token remove --resource ID\n"
	        "\n"
	        "A rate-limiting reverse proxy for the HighLevel API.\n"
	        "\n"
	        "  -c FILE   configuration file (default: %s if it exists)\n"
	        "  -o K=V    override one key, e.g. -o limits.max_wait=5s (repeatable)\n"
	        "  -t        check the configuration, print every error, and exit\n"
	        "  -V        print the version and exit\n"
	        "  -h        this help\n"
	        "\n"
	        "token import reads the refresh token from standard input, never from the command\n"
	        "line; the tokens live where the daemon keeps them (store.path, or Redis).\n"
	        "\n"
	        "Every key can also be set as GHLPROXY_SECTION_KEY in the environment.\n",
	        DEFAULT_CONFIG);
}

int main(int argc, char **argv)
{
	const char *config_path = NULL;
	const char **overrides = calloc((size_t)argc + 1, sizeof(*overrides));
	size_t n_overrides = 0;
	bool check_only = false;
	int opt;

	if (!overrides)
		return 1;
	/* '+': options stop at the first word, so `token import --resource ...` is the token
	 * command's to parse. */
	while ((opt = getopt(argc, argv, "+c:o:tVh")) != -1) {
		switch (opt) {
		case 'c':
			config_path = optarg;
			break;
		case 'o':
			overrides[n_overrides++] = optarg;
			break;
		case 't':
			check_only = true;
			break;
		case 'V':
			printf("ghlproxy %s\n", GHLPROXY_VERSION);
			free(overrides);
			return 0;
		case 'h':
			usage(stdout);
			free(overrides);
			return 0;
		default:
			usage(stderr);
			free(overrides);
			return 2;
		}
	}
	bool is_token_cmd = optind < argc && strcmp(argv[optind], "token") == 0;
	if (optind < argc && (!is_token_cmd || check_only)) {
		/* Not echoed: it may be a secret typed in the wrong place. */
		fprintf(stderr, "ghlproxy: unexpected argument%s\n",
		        is_token_cmd ? ": -t takes no command" : "");
		usage(stderr);
		free(overrides);
		return 2;
	}
	if (!config_path && access(DEFAULT_CONFIG, F_OK) == 0)
		config_path = DEFAULT_CONFIG;

	struct config_errors errs = { 0 };
	struct config *cfg = config_load(config_path, environ, overrides, n_overrides, &errs);
	if (!cfg) {
		for (size_t i = 0; i < errs.n; i++)
			fprintf(stderr, "%s\n", errs.v[i]);
		config_errors_deinit(&errs);
		free(overrides);
		return 1;
	}
	config_errors_deinit(&errs);
	if (is_token_cmd) {
		int trc = token_cli_main(cfg, argc - optind, argv + optind);
		config_free(cfg);
		free(overrides);
		return trc;
	}
	if (check_only) {
		printf("%s: configuration is valid\n", config_path ? config_path : "(defaults)");
		config_free(cfg);
		free(overrides);
		return 0;
	}
	struct daemon_args args = {
		.config_path = config_path,
		.overrides = overrides,
		.n_overrides = n_overrides,
		.envp = environ,
	};
	int rc = daemon_run(cfg, &args);
	free(overrides);
	return rc;
}
