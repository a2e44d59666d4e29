/*
 * token_cli.h: `ghlproxy [-c FILE] [-o k=v]... token import|list|remove ...`, the operator's way
 * to put OAuth refresh tokens into the store the daemon uses (the file store, or Redis with
 * limits.backend = redis), safely while daemons run.
 *
 *   token import --resource ID --user-type Location|Company   refresh token on standard input
 *   token list                                                no secret is ever printed
 *   token remove --resource ID
 */
#ifndef GHLPROXY_TOKEN_CLI_H
#define GHLPROXY_TOKEN_CLI_H

struct config;

/*
 * Run one token command. argv[0] is "token". Output on stdout, errors on stderr (never a token
 * or key). Returns the exit code: 0 done, 1 failed, 2 usage error.
 */
int token_cli_main(const struct config *cfg, int argc, char **argv);

#endif
