/* The pause program of the guest image's pause bundle (/pause_bundle/rootfs/pause): the
 * sandbox container's process, which only holds the pod's namespaces. It sleeps until a
 * signal, exits on SIGINT/SIGTERM, and reaps children that a shared PID namespace hands it. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void quit(int sig) { _exit(128 + sig); }

static void reap(int sig) {
    (void)sig;
    while (waitpid(-1, 0, WNOHANG) > 0) {
    }
}

int main(void) {
    signal(SIGINT, quit);
    signal(SIGTERM, quit);
    signal(SIGCHLD, reap);
    for (;;)
        pause();
}
