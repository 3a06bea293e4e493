/*
 * What every sub-command shares: the top-level help, each command's `--help`, and the one exit-code
 * table. The usage texts live beside the commands (bw_cli_*_usage) so that a usage error and `--help`
 * print the same words; docs/beamline-worker.1 and README.md repeat them, and test_cli checks that they
 * agree (every command and every exit code of BW_CLI_EXIT_CODES appears in the man page).
 */
#include <string.h>

#include "build_info.h"
#include "cli/cli.h"
#include "core/handler.h"

void bw_cli_print_exit_codes(FILE *f)
{
    fprintf(f, "exit codes:\n");
#define PRINT_CODE(name, code, text) fprintf(f, "  %d  %s\n", code, text);
    BW_CLI_EXIT_CODES(PRINT_CODE)
#undef PRINT_CODE
}

void bw_cli_usage(FILE *f)
{
    fprintf(
        f,
        "beamline-worker %s — job-execution worker for the Beamline scheduler\n\n"
        "usage:\n"
        "  beamline-worker [run]           run the worker (configuration from the environment)\n"
        "  beamline-worker exec            run one job from stdin locally, print the result\n"
        "  beamline-worker submit TYPE [PAYLOAD_JSON]   publish a job on NATS, print its result\n"
        "  beamline-worker submit -        publish the assignment read from stdin\n"
        "  beamline-worker submit --count N --concurrency C TYPE [PAYLOAD_JSON]   a load check\n"
        "  beamline-worker submit --file F publish the jobs in file F\n"
        "  beamline-worker watch [--results] [--dlq] [--once] [--json]   follow the workers' heartbeats\n"
        "  beamline-worker dlq list [--reason R] [--since T] [--json]   show the dead letters in DLQ_PATH\n"
        "  beamline-worker dlq replay [--reason R] [--since T] [--dry-run]   republish them\n"
        "  beamline-worker approvals list [--json]   the pending human approvals of every worker (NATS)\n"
        "  beamline-worker approvals approve|reject ID --approver NAME [--comment C]   decide one\n"
        "  beamline-worker approvals decide ID --option O --approver NAME [--comment C]\n"
        "  beamline-worker check-config    print the effective configuration (secrets redacted)\n"
        "  beamline-worker COMMAND --help  the options of one command\n"
        "  beamline-worker --version | --help\n\njob types:",
        BW_VERSION);
    for (const char *const *n = bw_handler_names(); *n != NULL; n++)
        fprintf(f, " %s", *n);
    fprintf(f, "\n\n");
    bw_cli_print_exit_codes(f);
    fprintf(f, "\nSee beamline-worker(1) and README.md for every configuration variable.\n");
}

static void run_usage(FILE *f)
{
    fprintf(f, "usage: beamline-worker [run]\n"
               "Runs the worker: takes assignments from NATS (CAF_ASSIGN_SUBJECT), runs them and publishes\n"
               "their results until SIGTERM or SIGINT (a second signal exits at once). Configuration comes\n"
               "from the environment (see beamline-worker check-config); an invalid value exits with 2.\n");
    bw_cli_print_exit_codes(f);
}

static void check_config_usage(FILE *f)
{
    fprintf(f, "usage: beamline-worker check-config\n"
               "Prints the effective configuration as one JSON object (defaults filled in, secrets\n"
               "redacted); an invalid variable is named on stderr with its allowed range (exit 2).\n");
    bw_cli_print_exit_codes(f);
}

static void sandbox_usage(FILE *f)
{
    fprintf(f, "usage: beamline-worker js-sandbox\n"
               "Internal: a script sandbox child that the worker starts itself for javascript jobs (frames\n"
               "on stdin and stdout). Not meant to be run by hand.\n");
}

int bw_cli_command_usage(const char *cmd, FILE *f)
{
    static const struct {
        const char *name;
        void (*usage)(FILE *f);
    } cmds[] = {{"run", run_usage},
                {"exec", bw_cli_exec_usage},
                {"submit", bw_cli_submit_usage},
                {"watch", bw_cli_watch_usage},
                {"dlq", bw_cli_dlq_usage},
                {"approvals", bw_cli_approvals_usage},
                {"check-config", check_config_usage},
                {"js-sandbox", sandbox_usage}};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        if (strcmp(cmd, cmds[i].name) == 0) {
            cmds[i].usage(f);
            return 0;
        }
    }
    return -1;
}
