"""busdx beside a PACS: the DICOMweb worker (busdx.pacs.dicomweb)."""
