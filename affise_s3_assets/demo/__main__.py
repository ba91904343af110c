from affise_s3_assets.demo.events import main

main()
