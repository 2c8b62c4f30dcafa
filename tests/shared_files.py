"""Paths of particular files under ``../shared/data/dicom`` that several test modules examine."""

FO_CHEST = "fo-dicom/CR-MONO1-10-chest.dcm"
HIGHDICOM = "highdicom/dx_image.dcm"
TXV = "torchxrayvision/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
TXV_MONO1 = "torchxrayvision/Fake_MONOHR1.dcm"
JPLY_FIXED = "pylibjpeg-data/RG2_JPLY_fixed.dcm"
WG04_CODECS = ("REF", "RLE", "JPLL", "JLSL", "JLSN", "J2KR", "J2KI", "JPLY")
