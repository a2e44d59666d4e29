/*
 * test_process.c: the command line and the process: -V, -t with every error of a broken file
 * reported as file:line, overrides from -o and the environment, built-in defaults when there is
 * no file, readiness over NOTIFY_SOCKET, and a clean exit on SIGTERM.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "fixture.h"
#include "httpc.h"

static char *dir;

static void setup(void)
{
	dir = harness_tmpdir();
	cr_assert(dir);
}

static void teardown(void)
{
	harness_tmpdir_free(dir);
}

TestSuite(process, .init = setup, .fini = teardown, .timeout = 60);

/* Run the binary to completion; returns its exit code and its stderr (and stdout) text. */
static int run(char *const argv[], char *const env[], char **out)
{
	struct harness_proc *p = harness_spawn(dir, "cli", argv, env);
	cr_assert(p);
	int rc = harness_wait_exit(p, 20000);
	*out = harness_log(p);
	harness_proc_free(p);
	return rc;
}

Test(process, version)
{
	char *out;
	char *argv[] = { (char *)harness_proxy_bin(), "-V", NULL };
	cr_expect_eq(run(argv, NULL, &out), 0);
	free(out);
}

Test(process, check_valid_file)
{
	char *out, path[512];
	cr_assert_eq(harness_write_file(dir, "ok.conf",
	                                "[server]\nlisten = 127.0.0.1:0\n[limits]\nburst = 50\n"),
	             0);
	snprintf(path, sizeof(path), "%s/ok.conf", dir);
	char *argv[] = { (char *)harness_proxy_bin(), "-t", "-c", path, NULL };
	cr_expect_eq(run(argv, NULL, &out), 0, "%s", out);
	free(out);
}

/* Every error is reported, each with its file and line. */
Test(process, check_reports_every_error_with_line)
{
	char *out, path[512], want[600];
	cr_assert_eq(harness_write_file(dir, "bad.conf",
	                                "[server]\n"             /* 1 */
	                                "listen = 127.0.0.1:0\n" /* 2 */
	                                "colour = blue\n"        /* 3: unknown key */
	                                "[limits]\n"             /* 4 */
	                                "burst = many\n"         /* 5: bad value */
	                                "window = 10\n"          /* 6: no unit */
	                                "guard = 5parsecs\n"     /* 7: bad unit */
	                                "[nosuchsection]\n"      /* 8: unknown section */
	                                "[log]\n"                /* 9 */
	                                "format = xml\n"),       /* 10: bad enum */
	             0);
	snprintf(path, sizeof(path), "%s/bad.conf", dir);
	char *argv[] = { (char *)harness_proxy_bin(), "-t", "-c", path, NULL };
	cr_expect_eq(run(argv, NULL, &out), 1);
	const int lines[] = { 3, 5, 6, 7, 8, 10 };
	for (size_t i = 0; i < sizeof(lines) / sizeof(*lines); i++) {
		snprintf(want, sizeof(want), "%s:%d: ", path, lines[i]);
		cr_expect(strstr(out, want) != NULL, "no error for line %d in:\n%s", lines[i], out);
	}
	free(out);
}

Test(process, check_missing_file)
{
	char *out, path[512], want[600];
	snprintf(path, sizeof(path), "%s/absent.conf", dir);
	char *argv[] = { (char *)harness_proxy_bin(), "-t", "-c", path, NULL };
	cr_expect_eq(run(argv, NULL, &out), 1);
	snprintf(want, sizeof(want), "%s:0: ", path);
	cr_expect(strstr(out, want) != NULL, "%s", out);
	free(out);
}

Test(process, overrides_on_command_line_and_environment)
{
	char *out;
	char *argv[] = { (char *)harness_proxy_bin(), "-t", "-o", "limits.burst=0", NULL };
	cr_expect_eq(run(argv, NULL, &out), 1, "-o was not applied");
	cr_expect(strstr(out, "command line") != NULL, "%s", out);
	free(out);

	char *env[] = { "GHLPROXY_LIMITS_MAX_WAIT=soon", NULL };
	char *argv2[] = { (char *)harness_proxy_bin(), "-t", NULL };
	cr_expect_eq(run(argv2, env, &out), 1, "the environment was not applied");
	cr_expect(strstr(out, "environment") != NULL, "%s", out);
	free(out);

	char *env_ok[] = { "GHLPROXY_LIMITS_MAX_WAIT=5s", NULL };
	cr_expect_eq(run(argv2, env_ok, &out), 0, "%s", out);
	free(out);
}

/* With no -c and no default file, it runs on built-in defaults (the port comes from the
 * environment so the test does not depend on 8080 being free) and stops cleanly. */
Test(process, runs_on_defaults_ready_and_clean_exit)
{
	char *argv[] = { (char *)harness_proxy_bin(), NULL };
	char *env[] = { "GHLPROXY_SERVER_LISTEN=127.0.0.1:0",
		        "GHLPROXY_SERVER_ADMIN_LISTEN=", NULL };
	struct harness_proc *p = harness_spawn(dir, "proxy", argv, env);

	cr_assert(p);
	cr_assert_eq(harness_wait_ready(p, 20000), 0, "no READY=1 on NOTIFY_SOCKET");
	char *addr = harness_notify_var(p, "X_GHLPROXY_LISTEN");
	cr_assert(addr && strncmp(addr, "127.0.0.1:", 10) == 0, "%s", addr ? addr : "(none)");
	char *status = harness_notify_var(p, "STATUS");
	cr_expect(status != NULL, "no STATUS= line");
	free(status);
	free(addr);
	harness_kill(p, SIGTERM);
	cr_expect_eq(harness_wait_exit(p, 20000), 0);
	char *log = harness_log(p);
	cr_expect(strstr(log, "listening") != NULL, "%s", log);
	free(log);
	harness_proc_free(p);
}
