/* placeholder until px sources land */
typedef int px_placeholder_unused;
