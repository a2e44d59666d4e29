/*
 * bench/waiting.c: what waiting costs. 10,000 requests wait in the proxy's queues across 1,000
 * keys (11 requests per key, of which 1 goes through and 10 wait for a window that will not open
 * before the run ends); report the proxy's memory per waiting request and its CPU while they
 * wait. The mock upstream and the proxy are started here, on loopback, with their own config.
 *
 * Usage: bench_waiting [--keys K] [--per-key P] [--seconds S]
 * Output: one "key: value" line per figure (bench/run collects them).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <unistd.h>

#include "harness.h"
#include "httpc.h"

static long proc_rss_kib(pid_t pid)
{
	char path[64], line[256];
	long kib = -1;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (strncmp(line, "VmRSS:", 6) == 0)
			kib = strtol(line + 6, NULL, 10);
	fclose(f);
	return kib;
}

/* utime + stime of a process, in clock ticks. */
static long long proc_cpu_ticks(pid_t pid)
{
	char path[64], buf[2048];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	char *p = strrchr(buf, ')');
	if (!p)
		return -1;
	long long ut = 0, st = 0;
	/* fields after ")" : state(3) ... utime(14) stime(15) */
	int field = 2;
	for (char *tok = strtok(p + 1, " "); tok; tok = strtok(NULL, " ")) {
		field++;
		if (field == 14)
			ut = atoll(tok);
		if (field == 15) {
			st = atoll(tok);
			break;
		}
	}
	return ut + st;
}

static double metric(const char *admin, const char *series)
{
	struct httpc_response r = { 0 };
	double v = -1;
	size_t n = strlen(series);

	if (httpc_request(admin, "GET", "/metrics", NULL, NULL, 0, &r, 10000) == 0) {
		for (const char *l = (const char *)r.body; l && *l;) {
			if (strncmp(l, series, n) == 0 && l[n] == ' ') {
				v = strtod(l + n + 1, NULL);
				break;
			}
			l = strchr(l, '\n');
			if (l)
				l++;
		}
	}
	httpc_response_free(&r);
	return v;
}

int main(int argc, char **argv)
{
	int keys = 1000, per_key = 11, seconds = 10;

	for (int i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--keys"))
			keys = atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--per-key"))
			per_key = atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--seconds"))
			seconds = atoi(argv[i + 1]);
	}
	int total = keys * per_key;
	struct rlimit rl = { (rlim_t)total + 1024, (rlim_t)total + 1024 };
	if (setrlimit(RLIMIT_NOFILE, &rl) < 0) {
		getrlimit(RLIMIT_NOFILE, &rl);
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
		if ((long)rl.rlim_cur < total + 100) {
			fprintf(stderr, "bench_waiting: need %d file descriptors\n", total + 100);
			return 1;
		}
	}
	signal(SIGPIPE, SIG_IGN);

	char *dir = harness_tmpdir();
	char *mock_argv[] = { (char *)harness_mock_bin(), "--listen", "127.0.0.1:0", NULL };
	struct harness_proc *mock = harness_spawn(dir, "mock", mock_argv, NULL);
	if (!mock || harness_wait_ready(mock, 20000) < 0)
		return 1;
	char *mock_addr = harness_notify_var(mock, "X_MOCK_LISTEN");
	char conf[1024];
	snprintf(conf, sizeof(conf),
	         "[server]\nlisten = 127.0.0.1:0\nadmin_listen = 127.0.0.1:0\n"
	         "header_timeout = 10m\n"
	         "max_connections = %d\n"
	         "[upstream]\nurl = http://%s\nv1_url = http://%s\n"
	         "[limits]\nburst = 1\nwindow = 2m\nmax_wait = 1h\nmax_queue_per_key = %d\n"
	         "max_queue = %d\n[log]\nlevel = warning\n",
	         total + 100, mock_addr, mock_addr, per_key, total + 10);
	harness_write_file(dir, "bench.conf", conf);
	char conf_path[512];
	snprintf(conf_path, sizeof(conf_path), "%s/bench.conf", dir);
	char *proxy_argv[] = { (char *)harness_proxy_bin(), "-c", conf_path, NULL };
	struct harness_proc *proxy = harness_spawn(dir, "proxy", proxy_argv, NULL);
	if (!proxy || harness_wait_ready(proxy, 20000) < 0)
		return 1;
	char *addr = harness_notify_var(proxy, "X_GHLPROXY_LISTEN");
	char *admin = harness_notify_var(proxy, "X_GHLPROXY_ADMIN");

	long rss_idle = proc_rss_kib(proxy->pid);

	/* Open every connection first, then send: the baseline below is connections without
	 * requests, so what is left is the cost of the waiting requests themselves. */
	int *fds = calloc((size_t)total, sizeof(int));
	for (int i = 0; i < total; i++) {
		fds[i] = httpc_connect(addr);
		if (fds[i] < 0) {
			fprintf(stderr, "bench_waiting: connect %d: %s\n", i, strerror(errno));
			return 1;
		}
	}
	usleep(500 * 1000);
	long rss_conns = proc_rss_kib(proxy->pid);
	for (int i = 0; i < total; i++) {
		char rq[256];
		int key = i % keys;
		int n = snprintf(rq, sizeof(rq),
		                 "GET /contacts/?locationId=BenchLoc%05d HTTP/1.1\r\nHost: b\r\n"
		                 "Authorization: Bearer bench-key-%05d\r\n\r\n",
		                 key, key);
		if (httpc_send_all(fds[i], rq, (size_t)n) < 0)
			return 1;
	}
	int expect_waiting = keys * (per_key - 1);
	int64_t until = harness_now_ms() + 60000;
	double waiting = 0;
	while (harness_now_ms() < until &&
	       (waiting = metric(admin, "ghlproxy_queue_depth")) < expect_waiting)
		usleep(100 * 1000);
	long rss_waiting = proc_rss_kib(proxy->pid);

	long long cpu0 = proc_cpu_ticks(proxy->pid);
	int64_t t0 = harness_now_ms();
	sleep((unsigned)seconds);
	long long cpu1 = proc_cpu_ticks(proxy->pid);
	int64_t t1 = harness_now_ms();
	long hz = sysconf(_SC_CLK_TCK);
	double cpu_pct =
	        100.0 * ((double)(cpu1 - cpu0) / (double)hz) / ((double)(t1 - t0) / 1000.0);

	printf("waiting_requests: %.0f\n", waiting);
	printf("keys: %d\n", keys);
	printf("rss_idle_kib: %ld\n", rss_idle);
	printf("rss_with_connections_kib: %ld\n", rss_conns);
	printf("rss_with_waiting_kib: %ld\n", rss_waiting);
	printf("bytes_per_waiting_request: %.0f\n",
	       waiting > 0 ? (double)(rss_waiting - rss_conns) * 1024.0 / waiting : -1);
	printf("bytes_per_waiting_request_with_connection: %.0f\n",
	       waiting > 0 ? (double)(rss_waiting - rss_idle) * 1024.0 / waiting : -1);
	printf("cpu_percent_while_waiting: %.3f\n", cpu_pct);
	printf("measured_seconds: %.1f\n", (double)(t1 - t0) / 1000.0);

	for (int i = 0; i < total; i++)
		httpc_close(fds[i]);
	free(fds);
	harness_kill(proxy, SIGTERM);
	harness_wait_exit(proxy, 30000);
	harness_proc_free(proxy);
	harness_proc_free(mock);
	harness_tmpdir_free(dir);
	free(addr);
	free(admin);
	free(mock_addr);
	return waiting >= expect_waiting ? 0 : 1;
}
