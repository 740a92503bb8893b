# Debian package of QuantLens (cpack -G DEB in the build folder).
install(FILES ${PROJECT_SOURCE_DIR}/resources/desktop/io.github.quantlens.QuantLens.desktop
        DESTINATION share/applications)
install(FILES ${PROJECT_SOURCE_DIR}/resources/desktop/io.github.quantlens.QuantLens.metainfo.xml
        DESTINATION share/metainfo)
install(FILES ${PROJECT_SOURCE_DIR}/resources/desktop/io.github.quantlens.QuantLens.svg
        DESTINATION share/icons/hicolor/scalable/apps)
install(FILES ${PROJECT_SOURCE_DIR}/resources/desktop/io.github.quantlens.QuantLens.mime.xml
        DESTINATION share/mime/packages)

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME quantlens)
set(CPACK_PACKAGE_VENDOR "QuantLens developers")
set(CPACK_PACKAGE_CONTACT "QuantLens developers <dev@quantlens.invalid>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "Workbench for LLM quantization (GUI and CLI)")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION science)
set(CPACK_DEBIAN_PACKAGE_HOMEPAGE "https://quantlens.invalid")
# Shared-library dependencies come from dpkg-shlibdeps where it can resolve every library. It gives
# up (and CPack silently drops the whole list) when a binary links a library no package owns, such
# as the CUDA runtime from NVIDIA's installer, so the Debian 12 runtime libraries are also named.
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_DEPENDS
    "libqt6widgets6, libqt6printsupport6, libqt6svg6, libqcustomplot2.1-qt6, libhdf5-103-1, \
libpcre2-8-0, libgomp1, hicolor-icon-theme, shared-mime-info")
include(CPack)
