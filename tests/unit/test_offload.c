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
	pthread_t run_thread, done_thread;
	atomic_int *order;  /* next position in the run order */
	int run_pos;        /* where this job ran */
	int done_calls;     /* on the loop */
	bool ran, stopping; /* what done was told */
	int *done_order;    /* next position in the done order (loop only) */
	int done_pos;
	atomic_bool *release; /* run waits for it, when set */
	atomic_bool started;  /* run has begun */
	struct event_base *base;
	int *left_to_finish;
};

static void run_job(struct offload_job *j)
{
	struct tjob *t = (struct tjob *)j;

	t->run_thread = pthread_self();
	atomic_store(&t->started, true);
	if (t->release)
		while (!atomic_load(t->release))
			usleep(1000);
	t->run_pos = atomic_fetch_add(t->order, 1);
}

static void done_job(struct offload_job *j, bool ran, bool stopping)
{
	struct tjob *t = (struct tjob *)j;

	t->done_calls++;
	t->done_thread = pthread_self();
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

/* Until run has begun on the helper (bounded: 10 s). */
static void wait_started(struct tjob *t)
{
	for (int i = 0; i < 10000 && !atomic_load(&t->started); i++)
		usleep(1000);
	cr_assert(atomic_load(&t->started), "the helper did not start the job");
}

static struct offload *start(struct event_base *base)
{
	char err[128];
	struct offload *ow = offload_new(base, err, sizeof(err));

	cr_assert_not_null(ow, "%s", err);
	return ow;
}

/* A helper with n jobs queued, the first held until release; set up once the helper has started
 * it. */
struct held {
	struct event_base *base;
	struct offload *ow;
	struct tjob t[3];
	atomic_int order;
	atomic_bool release;
	int done_order;
};

static void held_start(struct held *h, int n)
{
	h->base = event_base_new();
	h->ow = start(h->base);
	atomic_init(&h->order, 0);
	atomic_init(&h->release, false);
	h->done_order = 0;
	for (int i = 0; i < n; i++) {
		h->t[i] = (struct tjob){ .j = { .run = run_job, .done = done_job },
			                 .id = i,
			                 .order = &h->order,
			                 .done_order = &h->done_order,
			                 .release = i == 0 ? &h->release : NULL };
		offload_submit(h->ow, &h->t[i].j);
	}
	wait_started(&h->t[0]);
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
		cr_expect(pthread_equal(t[i].done_thread, pthread_self()),
		          "job %d was done off the loop", i);
	}
	cr_expect_eq(offload_pending(ow), 0);
	cr_expect_eq(offload_free(ow, 1000), 0);
	event_base_free(base);
}

Test(offload, free_runs_the_queue_until_the_deadline)
{
	static struct held h;
	struct tjob *t = h.t;

	held_start(&h, 3);
	/* Job 0 runs, held; 1 and 2 wait behind it. It is let go while offload_free waits, and
	 * what is queued behind it still runs (a write of new tokens must land at exit). */
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, release_later, &h.release), 0);
	cr_expect_eq(offload_free(h.ow, 5000), 0, "a job was left behind");
	pthread_join(th, NULL);
	cr_expect_eq(atomic_load(&h.order), 3, "the queue did not run before the deadline");
	for (int i = 0; i < 3; i++) {
		cr_expect_eq(t[i].done_calls, 1, "job %d: done ran %d times", i, t[i].done_calls);
		cr_expect(t[i].ran && t[i].stopping, "job %d: ran %d stopping %d", i, t[i].ran,
		          t[i].stopping);
		cr_expect_eq(t[i].done_pos, i, "job %d was done in position %d", i, t[i].done_pos);
	}
	event_base_free(h.base);
}

Test(offload, a_job_that_does_not_finish_is_left_and_the_queue_cancelled)
{
	static struct held h;
	struct tjob *t = h.t;

	held_start(&h, 2);
	cr_expect_eq(offload_free(h.ow, 100), 1, "a job still running was not counted");
	cr_expect_eq(t[0].done_calls, 0, "done ran for a job still running");
	cr_expect_eq(t[1].done_calls, 1, "the queued job was not done");
	cr_expect(!t[1].ran && t[1].stopping, "queued job: ran %d stopping %d", t[1].ran,
	          t[1].stopping);
	/* Let the thread finish and go: it must neither call done nor run what was cancelled. */
	atomic_store(&h.release, true);
	usleep(100 * 1000);
	cr_expect_eq(t[0].done_calls, 0, "done ran after offload_free");
	cr_expect_eq(t[1].done_calls, 1);
	cr_expect_eq(atomic_load(&h.order), 1, "a cancelled job ran");
	event_base_free(h.base);
}
