"""The Streamlit circuit browser (`interp app`): reads run folders, draws their figures, launches runs."""
