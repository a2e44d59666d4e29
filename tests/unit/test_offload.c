/*
 * test_offload.c: the helper thread of src/offload.c. Jobs run off the loop, one at a time, in
 * the order submitted; each done runs on the loop, in that order, exactly once; offload_free
 * cancels what has not started, waits for what runs, and leaves (and counts) a job that does not
 * finish in time.
 */
#include <criterion/criterion.h>

#include <event2/event.h>
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

#include "src/offload.h"

#define N_JOBS 50

struct tjob {
	struct offload_job j;
	int id;
	pthread_t run_thread;
	atomic_int *order;  /* next position in the run order */
	int run_pos;        /* where this job ran */
	int done_calls;     /* on the loop */
	bool ran, stopping; /* what done was told */
	int *done_order;    /* next position in the done order (loop only) */
	int done_pos;
	atomic_bool *release; /* run waits for it, when set */
	struct event_base *base;
	int *left_to_finish;
};

static void run_job(struct offload_job *j)
{
	struct tjob *t = (struct tjob *)j;

	t->run_thread = pthread_self();
	if (t->release)
		while (!atomic_load(t->release))
			usleep(1000);
	t->run_pos = atomic_fetch_add(t->order, 1);
}

static void done_job(struct offload_job *j, bool ran, bool stopping)
{
	struct tjob *t = (struct tjob *)j;

	t->done_calls++;
	t->ran = ran;
	t->stopping = stopping;
	t->done_pos = (*t->done_order)++;
	if (t->left_to_finish && --*t->left_to_finish == 0)
		event_base_loopbreak(t->base);
}

static void *release_later(void *arg)
{
	usleep(100 * 1000);
	atomic_store((atomic_bool *)arg, true);
	return NULL;
}

static struct offload *start(struct event_base *base)
{
	char err[128];
	struct offload *ow = offload_new(base, err, sizeof(err));

	cr_assert_not_null(ow, "%s", err);
	return ow;
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
	event_base_loopbreak(arg);
}

Test(offload, jobs_run_off_the_loop_in_order_and_finish_on_it)
{
	struct event_base *base = event_base_new();
	struct offload *ow = start(base);
	static struct tjob t[N_JOBS];
	atomic_int order = 0;
	int done_order = 0, left = N_JOBS;

	for (int i = 0; i < N_JOBS; i++) {
		t[i] = (struct tjob){ .j = { .run = run_job, .done = done_job },
			              .id = i,
			              .order = &order,
			              .done_order = &done_order,
			              .base = base,
			              .left_to_finish = &left };
		offload_submit(ow, &t[i].j);
	}
	cr_expect_eq(offload_pending(ow), N_JOBS);
	struct event *guard = evtimer_new(base, on_timeout, base);
	struct timeval tv = { .tv_sec = 10 };
	evtimer_add(guard, &tv);
	event_base_dispatch(base);
	event_free(guard);

	cr_assert_eq(left, 0, "not every done ran within 10 s");
	for (int i = 0; i < N_JOBS; i++) {
		cr_expect_eq(t[i].done_calls, 1, "job %d: done ran %d times", i, t[i].done_calls);
		cr_expect(t[i].ran && !t[i].stopping, "job %d: done told ran %d stopping %d", i,
		          t[i].ran, t[i].stopping);
		cr_expect_eq(t[i].run_pos, i, "job %d ran in position %d", i, t[i].run_pos);
		cr_expect_eq(t[i].done_pos, i, "job %d was done in position %d", i, t[i].done_pos);
		cr_expect(!pthread_equal(t[i].run_thread, pthread_self()), "job %d ran on the loop",
		          i);
	}
	cr_expect_eq(offload_pending(ow), 0);
	cr_expect_eq(offload_free(ow, 1000), 0);
	event_base_free(base);
}

Test(offload, free_cancels_the_queue_and_waits_for_the_running_job)
{
	struct event_base *base = event_base_new();
	struct offload *ow = start(base);
	static struct tjob t[3];
	atomic_int order = 0;
	atomic_bool release = false;
	int done_order = 0;

	for (int i = 0; i < 3; i++) {
		t[i] = (struct tjob){ .j = { .run = run_job, .done = done_job },
			              .id = i,
			              .order = &order,
			              .done_order = &done_order,
			              .release = i == 0 ? &release : NULL };
		offload_submit(ow, &t[i].j);
	}
	/* Job 0 runs, held; 1 and 2 wait behind it. It is let go while offload_free waits. */
	usleep(50 * 1000);
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, release_later, &release), 0);
	cr_expect_eq(offload_free(ow, 5000), 0, "the running job was left behind");
	pthread_join(th, NULL);
	cr_expect_eq(atomic_load(&order), 1, "a job queued behind ran after offload_free");
	cr_expect_eq(t[0].done_calls, 1);
	cr_expect(t[0].ran && t[0].stopping, "running job: ran %d stopping %d", t[0].ran,
	          t[0].stopping);
	for (int i = 1; i < 3; i++) {
		cr_expect_eq(t[i].done_calls, 1, "queued job %d: done ran %d times", i,
		             t[i].done_calls);
		cr_expect(!t[i].ran && t[i].stopping, "queued job %d: ran %d stopping %d", i,
		          t[i].ran, t[i].stopping);
	}
	event_base_free(base);
}

Test(offload, a_job_that_does_not_finish_is_left_and_counted)
{
	struct event_base *base = event_base_new();
	struct offload *ow = start(base);
	static struct tjob t;
	atomic_int order = 0;
	atomic_bool release = false;
	int done_order = 0;

	t = (struct tjob){ .j = { .run = run_job, .done = done_job },
		           .order = &order,
		           .done_order = &done_order,
		           .release = &release };
	offload_submit(ow, &t.j);
	usleep(50 * 1000);
	cr_expect_eq(offload_free(ow, 100), 1, "a job still running was not counted");
	cr_expect_eq(t.done_calls, 0, "done ran for a job still running");
	/* Let the thread finish and go: it must neither call done nor touch the loop. */
	atomic_store(&release, true);
	usleep(100 * 1000);
	cr_expect_eq(t.done_calls, 0, "done ran after offload_free");
	cr_expect_eq(atomic_load(&order), 1);
	event_base_free(base);
}
