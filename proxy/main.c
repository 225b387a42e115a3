/* main.c - the airlock binary: subcommand dispatch. */
#include "common.h"

#include <stdio.h>

int
main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "airlock: not yet\n");
    return 2;
}
