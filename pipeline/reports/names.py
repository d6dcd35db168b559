"""How the reports name each algorithm (tables, figures and report pages share it)."""

DISPLAY_NAMES = {
    "supervised": "Supervised", "pseudolabel": "Pseudo-Label", "meanteacher": "Mean Teacher",
    "uda": "UDA", "fixmatch": "FixMatch", "flexmatch": "FlexMatch", "dash": "Dash",
    "freematch": "FreeMatch", "softmatch": "SoftMatch",
}
