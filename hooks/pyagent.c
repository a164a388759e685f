/* After an attach to a Python process, the in-target Python agent (tlsprof/agent/agent.py, next to
 * this library in the package) joins OpenSSL's objects to Python's. Python work never runs on the
 * thread the injector borrowed: a thread of our own takes the GIL with PyGILState_Ensure and runs a
 * fixed bootstrap. Nothing here links libpython: its functions are looked up in the process, and a
 * process without an initialized Python is left alone. Under `run`, sitecustomize starts the agent, and
 * the collector asks for it here (AGENT) when the interpreter never imported sitecustomize. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shim.h"

static int agent_started;

static void *run_python(void *code)
{
    int (*initialized)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "Py_IsInitialized");
    int (*ensure)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "PyGILState_Ensure");
    void (*release)(int) = (void (*)(int))dlsym(RTLD_DEFAULT, "PyGILState_Release");
    int (*run)(const char *) = (int (*)(const char *))dlsym(RTLD_DEFAULT, "PyRun_SimpleString");
    if (initialized && ensure && release && run && initialized()) {
        int gil = ensure();
        run(code);
        release(gil);
    }
    free(code);
    return NULL;
}

static int spawn_python(char *code)
{
    if (!code) return -1;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&t, &attr, run_python, code);
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) free(code);
    return rc == 0 ? 0 : -1;
}

static int is_python(void)
{
    int (*initialized)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "Py_IsInitialized");
    return initialized && initialized();
}

/* Paths go into Python string literals: refuse anything that would need escaping. */
static int literal_safe(const char *s) { return !strpbrk(s, "'\\\n\r"); }

int pyagent_start(const char *channel_dir, int late)
{
    const char *wanted = getenv("TLSPROF_AGENT");
    if (wanted && !strcmp(wanted, "0")) return 0;
    if (!is_python() || !channel_dir || !literal_safe(channel_dir)) return 0;
    Dl_info self;
    if (!dladdr((void *)pyagent_start, &self) || !self.dli_fname) return 0;
    char lib[512], agent[600];
    snprintf(lib, sizeof lib, "%s", self.dli_fname);
    snprintf(agent, sizeof agent, "%s/agent/agent.py", dirname(lib));
    if (access(agent, R_OK) != 0 || !literal_safe(agent)) return 0;
    char *code = NULL;
    if (asprintf(&code,
                 "def _tlsprof_boot():\n"
                 "    try:\n"
                 "        import importlib.util, sys\n"
                 "        m = sys.modules.get('_tlsprof_agent')\n"
                 "        if m is None:\n"
                 "            s = importlib.util.spec_from_file_location('_tlsprof_agent', '%s')\n"
                 "            m = importlib.util.module_from_spec(s)\n"
                 "            sys.modules['_tlsprof_agent'] = m\n"
                 "            s.loader.exec_module(m)\n"
                 "        m.start('%s', capture=%s)\n"
                 "    except Exception:\n"
                 "        pass\n"
                 "_tlsprof_boot()\n"
                 "del _tlsprof_boot\n",
                 agent, channel_dir, late ? "'late'" : "True") < 0)
        return 0;
    if (spawn_python(code) != 0) return 0;
    agent_started = 1;
    return 1;
}

void pyagent_stop(void)
{
    if (!agent_started || !is_python()) return;
    agent_started = 0;
    spawn_python(strdup("import sys\n"
                        "m = sys.modules.get('_tlsprof_agent')\n"
                        "if m is not None:\n"
                        "    m.stop()\n"
                        "del m\n"));
}
